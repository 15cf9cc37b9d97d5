"""Networks bundled with SegAudit: the Lipschitz-constrained demo segmentation model."""

from __future__ import annotations

from audit.nets.demo_fcn import (
    AOLConv2d,
    LipschitzSegNet,
    MaxMin,
    aol_scale,
    conv_norm_upper_bound,
    lipschitz_upper_bound,
    to_plain_conv,
)

__all__ = [
    "AOLConv2d",
    "LipschitzSegNet",
    "MaxMin",
    "aol_scale",
    "conv_norm_upper_bound",
    "lipschitz_upper_bound",
    "to_plain_conv",
]

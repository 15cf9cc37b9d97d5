"""A provable upper bound of a model's L2 Lipschitz constant, computed from its weights.

Why: a Lipschitz certificate is only as good as its constant ``L`` (reference section 3).
Power iteration gives a *lower* estimate of a spectral norm, and a constant stated in a
model's metadata is a hypothesis.  This package derives ``L`` from the weights, layer by
layer, with a bound that holds by proof for every layer it accepts, and refuses
(:class:`UnsupportedLayer`) everything else instead of assuming 1.

One module per job, data flowing one way (each imports only those above it):

- :mod:`.norms`: operator norms of single layers (convolutions, linear, BatchNorm,
  pooling, resizes, activations);
- :mod:`.values`: what the interpreter knows of a value, a resolved call, the context
  that records each :class:`LayerBound`, and :class:`UnsupportedLayer`;
- :mod:`.propagate`: the interpreter, one rule per operation (sums add, compositions
  multiply, ...);
- :mod:`.fx_graph` and :mod:`.torchscript`: the front ends, reading eager modules and
  ``torch.export`` programs, or TorchScript models;
- :mod:`.model_bound`: the entry point :func:`lipschitz_bound` (training-mode checks, the
  wrapper's normalisation and resize).
"""

from __future__ import annotations

from audit.certify.lipschitz.model_bound import LipschitzBound, lipschitz_bound
from audit.certify.lipschitz.norms import (
    SVD_MARGIN,
    activation_bound,
    adaptive_avgpool_bound,
    avgpool_bound,
    batchnorm_bound,
    conv_bound,
    conv_norm_upper_bound,
    linear_bound,
    maxpool_bound,
    resize_bound,
    separable_bound,
)
from audit.certify.lipschitz.values import LayerBound, UnsupportedLayer

__all__ = [
    "SVD_MARGIN",
    "LayerBound",
    "LipschitzBound",
    "UnsupportedLayer",
    "activation_bound",
    "adaptive_avgpool_bound",
    "avgpool_bound",
    "batchnorm_bound",
    "conv_bound",
    "conv_norm_upper_bound",
    "linear_bound",
    "lipschitz_bound",
    "maxpool_bound",
    "resize_bound",
    "separable_bound",
]

"""A small fully convolutional segmentation net that is 1-Lipschitz in L2 by construction.

Architecture (``LipschitzSegNet``, details in its docstring)::

    PixelUnshuffle(4) -> [conv 3x3 -> MaxMin] x n -> conv 3x3 -> PixelShuffle(4)

optionally with a coarser level, PixelUnshuffle(2) -> [conv -> MaxMin] x m -> PixelShuffle(2),
before the last conv.

Every piece has L2 operator norm (or Lipschitz constant) at most 1, so the composition, from the
input image to the whole logit map, is 1-Lipschitz:

- ``PixelUnshuffle`` / ``PixelShuffle`` only move coordinates around: they are permutations,
  norm exactly 1.
- ``MaxMin`` (GroupSort with groups of 2) sorts pairs of channels.  Per pair, (a, b) ->
  (max, min) is either the identity or a swap, piecewise, so it is 1-Lipschitz; its Jacobian is a
  permutation almost everywhere, which preserves gradient norms (unlike ReLU).
- each convolution has operator norm at most 1, by one of two constructions:
  ``AOLConv2d`` here (Almost-Orthogonal Lipschitz rescaling, Prach & Lampert, ECCV 2022; proof
  below), or an orthogonal convolution from orthogonium (BCOP-style ``AdaptiveOrthoConv2d``,
  Boissin et al. 2025), which ``scripts/train_demo_model.py`` passes in through ``conv=``.

Why two: AOL is a few lines of plain torch, so this module and its tests need nothing else.
But AOL layers are contractive rather than orthogonal, so gradients fade through the depth; on
the demo task they reached about 0.25 mIoU where orthogonal layers reached 0.45 in the same
short budget.  The bundled model is therefore trained with orthogonium (a training-only
dependency) and exported as plain ``nn.Conv2d`` layers.  Neither construction is taken on
trust for the exported model: ``conv_norm_upper_bound`` bounds each exported kernel from its
weights alone.

Proof of the AOL bound for a zero-padded convolution.  Let ``K`` be the kernel (C_out x C_in x
k x k) and ``P`` the convolution over the whole plane Z^2 (an operator on finitely supported
inputs).  Its Gram operator ``M = P^T P`` is translation invariant with entries given by the
kernel autocorrelation ``(K^T * K)_{ij}(s) = sum_c sum_u K[c, i, u] K[c, j, u + s]``.  For every
finitely supported ``x`` and positive weights ``q``, with ``|M|`` the entrywise absolute value::

    x^T M x <= sum_{a,b} |M_ab| |x_a| |x_b|
            <= sum_{a,b} |M_ab| (q_b / q_a x_a^2 + q_a / q_b x_b^2) / 2      (AM-GM)
             = sum_a x_a^2 (1 / q_a) sum_b |M_ab| q_b                         (M symmetric)

so ``||P||^2 <= max_a (|M| q)_a / q_a`` (the weighted Schur test).  AOL rescales input channel
``i`` by ``s_i = d_i^{-1/2}`` with ``d_i = sum_j sum_s |(K^T * K)_{ij}(s)|``: the rescaled Gram is
``D M D`` with ``D = diag(s)``, and with ``q_j = 1 / s_j`` the test gives
``max_i s_i^2 d_i = 1``.  The zero-padded "same" convolution on an H x W image equals
``R P E`` where ``E`` embeds the image in Z^2 with zeros around it (an isometry) and ``R``
restricts the output to the H x W window (norm <= 1), hence its norm is at most 1 as well.  A
bias does not change a Lipschitz constant.

``conv_norm_upper_bound`` (in :mod:`audit.certify.lipschitz.norms`, with ``MaxMin`` and
``kernel_autocorrelation``) evaluates the same Schur test for an arbitrary plain kernel (in
float64, with weights from power iteration), on the kernel and on its adjoint, which is how
the exported model's constant is computed from its materialised weights.  For an orthogonal
kernel the adjoint (or direct) autocorrelation is the identity, so the bound is 1 up to
rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from audit.certify.lipschitz.norms import MaxMin, conv_norm_upper_bound, kernel_autocorrelation

#: keeps d_i away from 0 for an all-zero input channel; a larger d_i only shrinks the layer
AOL_EPS = 1e-6


def aol_scale(weight: torch.Tensor, eps: float = AOL_EPS) -> torch.Tensor:
    """Per-input-channel AOL factors ``(sum_j sum_t |(K^T * K)_{ij}(t)| + eps)^{-1/2}``."""
    d = kernel_autocorrelation(weight).abs().sum(dim=(1, 2, 3))
    return (d + eps).rsqrt()


class AOLConv2d(nn.Module):
    """A stride-1, zero-padded "same" convolution whose L2 operator norm is at most 1.

    The free parameter is an unconstrained kernel; the layer applies the kernel with each input
    channel rescaled by :func:`aol_scale` (see the module docstring for the proof).  Output
    channels may outnumber input channels or not: the bound does not care.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            # An even kernel has no centred "same" zero padding in plain nn.Conv2d.
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Start near an orthogonal centre tap: AOL then barely rescales it, so the layer begins
        # almost norm-preserving and the signal survives the depth of the net at initialisation.
        centre = torch.empty(self.out_channels, self.in_channels)
        nn.init.orthogonal_(centre)
        with torch.no_grad():
            nn.init.normal_(self.kernel, std=0.02)
            c = self.kernel_size // 2
            self.kernel[:, :, c, c] += centre

    def effective_weight(self) -> torch.Tensor:
        return self.kernel * aol_scale(self.kernel)[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.kernel_size // 2)

    def to_conv2d(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the effective (rescaled) weight, for export."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            padding=self.kernel_size // 2,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.effective_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


#: builds a convolution with L2 operator norm <= 1 from (in_channels, out_channels)
ConvFactory = Callable[[int, int], nn.Module]


def to_plain_conv(layer: nn.Module) -> nn.Conv2d:
    """Copy a constrained convolution's effective weight into a plain zero-padded ``nn.Conv2d``.

    Accepts :class:`AOLConv2d` and any ``nn.Conv2d`` subclass whose ``weight`` attribute is the
    effective (constrained) kernel, as with ``torch.nn.utils.parametrize`` layers such as
    orthogonium's.  Only stride-1, undilated, ungrouped, zero-padded "same" layers qualify:
    anything else would not compute the same function after the copy.
    """
    if isinstance(layer, AOLConv2d):
        return layer.to_conv2d()
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"cannot export {type(layer).__name__} as a plain convolution")
    k_h, k_w = layer.kernel_size
    same = layer.padding == "same" or tuple(layer.padding) == (k_h // 2, k_w // 2)
    if (
        k_h % 2 != 1
        or k_w % 2 != 1
        or not same
        or layer.padding_mode != "zeros"
        or layer.stride != (1, 1)
        or layer.dilation != (1, 1)
        or layer.groups != 1
    ):
        raise TypeError(f"only stride-1 zero-padded 'same' convolutions are exported: {layer}")
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        (k_h, k_w),
        padding=(k_h // 2, k_w // 2),
        bias=layer.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


class LipschitzSegNet(nn.Module):
    """Trainable 1-Lipschitz segmentation net: image (N x 3 x H x W) -> logits (N x K x H x W).

    Layout, every conv 3x3 and followed by ``MaxMin`` except the head::

        PixelUnshuffle(factor)                      3 f^2 channels at 1/f resolution
        depth convs, the first 3 f^2 -> width       at 1/f
        if inner_depth:                             a coarser level for context:
            PixelUnshuffle(2)                       4 width channels at 1/(2f)
            inner_depth convs: 4w -> 2w ... 2w -> 4w
            PixelShuffle(2)                         back to width channels at 1/f
        head conv width -> num_classes f^2
        PixelShuffle(factor)                        num_classes channels at full resolution

    The pixel (un)shuffles are permutations, so the coarse level doubles the receptive field
    growth per layer at the same cost without losing information or the 1-Lipschitz bound.
    H and W must be divisible by ``factor`` (by ``2 * factor`` with an inner level).
    ``conv`` builds each convolution and must return a zero-padded stride-1 layer with L2
    operator norm at most 1 (default :class:`AOLConv2d`; the demo model's training script
    passes orthogonium's orthogonal convolutions).  ``export`` turns the net into plain torch
    layers with the constrained weights materialised.
    """

    def __init__(
        self,
        num_classes: int = 8,
        *,
        width: int = 64,
        depth: int = 6,
        inner_depth: int = 0,
        factor: int = 4,
        in_channels: int = 3,
        conv: ConvFactory = AOLConv2d,
    ) -> None:
        super().__init__()
        if width % 2 != 0:
            raise ValueError(f"width must be even for MaxMin, got {width}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if inner_depth == 1:
            raise ValueError("inner_depth must be 0 or at least 2 (one conv down, one up)")
        self.num_classes = num_classes
        self.factor = factor
        channels = [in_channels * factor * factor] + [width] * depth
        layers: list[nn.Module] = [nn.PixelUnshuffle(factor)]
        for c_in, c_out in itertools.pairwise(channels):
            layers += [conv(c_in, c_out), MaxMin()]
        if inner_depth:
            inner = [4 * width] + [2 * width] * (inner_depth - 1) + [4 * width]
            layers.append(nn.PixelUnshuffle(2))
            for c_in, c_out in itertools.pairwise(inner):
                layers += [conv(c_in, c_out), MaxMin()]
            layers.append(nn.PixelShuffle(2))
        layers += [conv(width, num_classes * factor * factor), nn.PixelShuffle(factor)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def export(self) -> nn.Sequential:
        """Plain ``nn.Sequential`` computing the same function, with effective conv weights."""
        plain: list[nn.Module] = []
        for layer in self.layers:
            if isinstance(layer, nn.PixelUnshuffle):
                plain.append(nn.PixelUnshuffle(layer.downscale_factor))
            elif isinstance(layer, nn.PixelShuffle):
                plain.append(nn.PixelShuffle(layer.upscale_factor))
            elif isinstance(layer, MaxMin):
                plain.append(MaxMin())
            else:
                plain.append(to_plain_conv(layer))
        return nn.Sequential(*plain).eval()


def lipschitz_upper_bound(model: nn.Module) -> tuple[float, list[float]]:
    """Product of per-conv norm bounds for a sequential net of convs, MaxMin and pixel shuffles.

    Returns the product and the per-conv factors.  Raises ``TypeError`` on any layer whose
    Lipschitz constant this function does not know, rather than silently assuming 1.
    """
    factors: list[float] = []
    for layer in model.children():
        if isinstance(layer, nn.Conv2d):
            # Stride and zero padding only restrict the output of the whole-plane convolution;
            # dilation, groups and other padding modes would need another bound.
            if layer.dilation != (1, 1) or layer.groups != 1 or layer.padding_mode != "zeros":
                raise TypeError(f"unsupported conv for the Schur bound: {layer}")
            factors.append(conv_norm_upper_bound(layer.weight))
        elif not isinstance(layer, (MaxMin, nn.PixelShuffle, nn.PixelUnshuffle)):
            raise TypeError(f"no known Lipschitz constant for {type(layer).__name__}")
    return math.prod(factors), factors

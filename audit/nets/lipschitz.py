"""A small fully convolutional segmentation net that is 1-Lipschitz in L2 by construction.

Architecture (``LipschitzSegNet``)::

    PixelUnshuffle(4) -> [AOLConv2d 3x3 -> MaxMin] x (depth - 1) -> AOLConv2d 3x3 -> PixelShuffle(4)

Every piece has L2 operator norm (or Lipschitz constant) at most 1, so the composition, from the
input image to the whole logit map, is 1-Lipschitz:

- ``PixelUnshuffle`` / ``PixelShuffle`` only move coordinates around: they are permutations,
  norm exactly 1.
- ``MaxMin`` (GroupSort with groups of 2) sorts pairs of channels.  Per pair, (a, b) ->
  (max, min) is either the identity or a swap, piecewise, so it is 1-Lipschitz; its Jacobian is a
  permutation almost everywhere, which preserves gradient norms (unlike ReLU).
- ``AOLConv2d`` is Almost-Orthogonal-Lipschitz rescaling (Prach & Lampert, ECCV 2022).

Why AOL rather than orthogonal convolutions (orthogonium): AOL is a few lines of plain torch,
costs one small autocorrelation per step (cheap on a 2-core CPU), and needs no extra dependency
to retrain.  Its bound is not tight (the layer is "almost" orthogonal), but the demo model only
has to be accurate on synthetic street scenes and provably bounded, not state of the art.

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

``conv_norm_upper_bound`` evaluates the same Schur test for an arbitrary plain kernel (in
float64, with weights from power iteration), which is how the exported model's constant is
computed from its materialised weights rather than taken on trust.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: keeps d_i away from 0 for an all-zero input channel; a larger d_i only shrinks the layer
AOL_EPS = 1e-6


class MaxMin(nn.Module):
    """GroupSort with groups of two: channel halves (a, b) -> (max(a, b), min(a, b))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def kernel_autocorrelation(weight: torch.Tensor) -> torch.Tensor:
    """Return ``K^T * K`` as a C_in x C_in x (2k-1) x (2k-1) tensor.

    Entry ``[i, j, t]`` is ``sum_c sum_u K[c, i, u + t] K[c, j, u]``: the Gram operator of the
    convolution over the whole plane, between input channels i and j at spatial offset t.
    """
    k_h, k_w = weight.shape[-2:]
    kt = weight.transpose(0, 1)
    return F.conv2d(kt, kt, padding=(k_h - 1, k_w - 1))


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


def conv_norm_upper_bound(weight: torch.Tensor, *, iterations: int = 200) -> float:
    """A provable upper bound of the L2 operator norm of a stride-1 zero-padded convolution.

    Weighted Schur test in float64: ``sqrt(max_i (A q)_i / q_i)`` with ``A_ij = sum_t |(K^T *
    K)_{ij}(t)|`` and any positive ``q``.  The bound holds for every positive ``q``; power
    iteration on ``A`` only makes it tighter (towards the Perron root of ``A``), so its
    convergence does not matter for soundness.  Valid for every input size, any zero padding
    and any stride: each of those convolutions is a restriction of the one over the whole plane.
    """
    w = weight.detach().to(dtype=torch.float64, device="cpu")
    a = kernel_autocorrelation(w).abs().sum(dim=(2, 3))
    q = torch.ones(a.shape[0], dtype=torch.float64)
    for _ in range(iterations):
        nxt = a @ q
        norm = nxt.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        # The floor keeps q strictly positive, which the Schur test requires.
        q = (nxt / norm).clamp_min(1e-12)
    ratio = (a @ q) / q
    return math.sqrt(float(ratio.max()))


class LipschitzSegNet(nn.Module):
    """Trainable 1-Lipschitz segmentation net: image (N x 3 x H x W) -> logits (N x K x H x W).

    H and W must be divisible by ``factor``.  ``export`` turns it into plain torch layers with
    the constrained weights materialised.
    """

    def __init__(
        self,
        num_classes: int = 8,
        *,
        width: int = 64,
        depth: int = 6,
        factor: int = 4,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if width % 2 != 0:
            raise ValueError(f"width must be even for MaxMin, got {width}")
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        self.num_classes = num_classes
        self.factor = factor
        self.unshuffle = nn.PixelUnshuffle(factor)
        channels = [in_channels * factor * factor] + [width] * (depth - 1)
        self.hidden = nn.ModuleList(
            AOLConv2d(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.activation = MaxMin()
        self.head = AOLConv2d(width, num_classes * factor * factor)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.unshuffle(x)
        for conv in self.hidden:
            h = self.activation(conv(h))
        return self.shuffle(self.head(h))

    def export(self) -> nn.Sequential:
        """Plain ``nn.Sequential`` computing the same function, with effective conv weights."""
        layers: list[nn.Module] = [nn.PixelUnshuffle(self.factor)]
        for conv in self.hidden:
            layers += [conv.to_conv2d(), MaxMin()]
        layers += [self.head.to_conv2d(), nn.PixelShuffle(self.factor)]
        return nn.Sequential(*layers).eval()


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

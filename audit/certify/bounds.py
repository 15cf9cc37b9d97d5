"""A provable upper bound of a model's L2 Lipschitz constant, computed from its weights.

Why: a Lipschitz certificate is only as good as its constant ``L`` (reference section 3).
Power iteration gives a *lower* estimate of a spectral norm, and a constant stated in a
model's metadata is a hypothesis.  This module derives ``L`` from the weights, layer by
layer, with a bound that holds by proof for every layer it accepts, and refuses
(:class:`UnsupportedLayer`) everything else instead of assuming 1.

How the pieces combine, on the function ``x -> logits`` in [0, 1] pixel space:

- composition multiplies: ``L(g o f) <= L(g) L(f)``;
- a sum of branches adds: ``L(a + b) <= L(a) + L(b)`` (a constant operand adds 0);
- a concatenation of branches (disjoint output coordinates) gives ``sqrt(sum L_i^2)``;
- broadcasting an input-dependent operand that repeats each of its entries ``r`` times
  multiplies its constant by ``sqrt(r)`` (exact for a repetition);
- multiplying or dividing by a constant ``c`` scales by ``max |c|`` or ``1 / min |c|``;
- ``MaxMin`` (GroupSort 2) written as ``chunk -> maximum, minimum -> cat`` is recognised as a
  whole (1-Lipschitz); taken op by op it would cost a factor 2.

Per layer (every number in float64 on CPU; exact singular values are inflated by
:data:`SVD_MARGIN` against rounding):

- ``Conv2d`` / ``ConvTranspose2d`` (zeros padding, any stride, dilation and groups; circular
  padding): a zero-padded convolution is a restriction of the convolution over the whole
  plane, so its norm is at most the whole-plane norm ``sup_w ||K^(w)||_2`` (``K^`` the
  kernel's matrix-valued symbol).  A stride ``s`` is a stride-1 convolution, with the
  "polyphase" kernel ``K'[b][a] = K[s a + b]``, applied to the ``s^2`` phases of the input (a
  permutation), so the polyphase kernel's supremum is the strided layer's exact whole-plane
  norm.  Dilation leaves the supremum unchanged, groups make the operator block-diagonal
  (max over groups), and a transposed convolution is the adjoint of a convolution (same
  norm).  A circular convolution on an H x W torus has norm ``max ||K^(w)||`` over the DFT
  grid of H x W, again at most the supremum.  The supremum is bounded from above by the
  weighted Schur test of :func:`audit.nets.lipschitz.conv_norm_upper_bound` and, where that
  is loose and cheap enough, by the maximum over an N x N DFT grid divided by
  ``sqrt(1 - pi (k_h + k_w - 2) / N)``: ``w -> z^H K^(w)^H K^(w) z`` is a trigonometric
  polynomial of degree ``k - 1`` per axis, so Bernstein's inequality bounds how far it can
  exceed its value at the nearest grid point.  When the input size is known, the exact
  maximum over the DFT grid of a torus large enough to hold the zero padding without
  wrap-around (or of the input torus, for circular padding) bounds the layer at that size.
  1x1 kernels: exact SVD.  Reflect and replicate padding are refused: they read border
  pixels twice, so such a layer is not bounded by its kernel's norm (1.8x measured on one
  "1-Lipschitz" layer).
- ``Linear``: exact SVD.  ``BatchNorm`` in eval mode: ``max |gamma| / sqrt(var + eps)``.
- activations: ReLU, ReLU6, LeakyReLU/PReLU (``max(1, |slope|)``), ELU/SELU/CELU, Tanh,
  Hardtanh, clamp, abs, Softplus, Softsign, LogSigmoid (1), Sigmoid (1/4), Hardsigmoid (1/6),
  Hardswish (3/2), GELU (erf form, ``1 + 1/sqrt(2 pi e)``: ``Phi <= 1`` and
  ``x phi(x) <= phi(1)``), SiLU (1.2297: ``sigmoid <= 1`` and ``x sigmoid'(x) <= 0.22964``
  from ``cosh t >= 1 + t^2/2``); the true constants of the last two are about 1.13 and 1.10.
  The tanh approximation of GELU is refused.
- permutations and reshapes (PixelShuffle/PixelUnshuffle, Flatten, view, permute, ...),
  Identity, eval-mode Dropout, slicing: 1.  Constant zero padding: 1.
- ``MaxPool2d``: ``sqrt(c_h c_w)``, ``c = min(k, ceil(((k - 1) d + 1) / s))`` the most
  windows one pixel belongs to (``|max a - max b| <= max |a - b|``, then count); exact in the
  interior.  ``AvgPool2d`` (no ceil mode, padding counted or absent, no divisor override):
  Schur test ``sqrt(c_h c_w / (k_h k_w))``.  At a known size, pooling, adaptive average
  pooling and interpolation are bounded by the exact norms of their per-axis matrices
  (checked to reproduce the operator, which is separable).
- the :class:`~audit.model.wrapper.SegmentationWrapper`: its normalisation ``(x - mean) / std``
  contributes ``1 / min |std|`` (multiplied, never divided), and if the model predicts at a
  lower resolution, the bilinear resize of its logits contributes the exact norm of that
  resize at the input size (about the scale factor; the model's output size is found by
  running it once).

Models: eager modules are traced with ``torch.fx`` (supported layers kept as leaves) and the
graph is checked to reproduce the module on a random input; programs from ``torch.export``
are read from their ATen graph; TorchScript models are read as chains of submodules, each
leaf's graph holding one supported operation (or MaxMin's pattern).  Shapes come from one
forward pass at ``input_size`` (or the metadata's size, or 64 x 64 for shape checks only).
A bound that depends on the input size holds at that size only, and ``method`` says so.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import itertools
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from audit.errors import ModelError
from audit.model.frozen_training import torchscript_training_ops
from audit.model.wrapper import SegmentationWrapper
from audit.nets.lipschitz import MaxMin, conv_norm_upper_bound

__all__ = ["SVD_MARGIN", "LayerBound", "LipschitzBound", "UnsupportedLayer", "lipschitz_bound"]

#: relative inflation of every exact singular value (SVD, DFT symbol) against rounding
SVD_MARGIN = 1e-6
#: probe size when neither ``input_size`` nor the metadata gives one (shape checks only)
DEFAULT_PROBE_SIZE = (64, 64)
#: the Schur bound is accepted as is when within this factor of a grid lower estimate
_TIGHT = 1e-3
#: cost caps of the DFT refinement: grid points x c_out x c_in x min(c), and x c_out x c_in
_WORK_BUDGET = 2.5e8
_MEMORY_BUDGET = 4e6
#: one-line inventory for error messages
SUPPORTED = (
    "supported: Conv2d/ConvTranspose2d (zeros or circular padding), Linear, BatchNorm (eval), "
    "ReLU/ReLU6/LeakyReLU/PReLU/ELU/SELU/CELU/GELU/SiLU/Tanh/Sigmoid/Hardtanh/Hardsigmoid/"
    "Hardswish/Softplus, MaxMin, PixelShuffle/PixelUnshuffle, Flatten, MaxPool2d, AvgPool2d, "
    "AdaptiveAvgPool2d and Upsample/interpolate (with a known input size), Identity, eval-mode "
    "Dropout, residual sums, concatenations, reshapes, slicing and scaling by constants"
)
_ADVICE = (
    "make the model fx-traceable (or save it with torch.export) using supported layers, or "
    "state its constant as a claim (metadata 'lipschitz') so that SegAudit tests it"
)


@dataclass(frozen=True)
class LayerBound:
    """The Lipschitz bound of one layer or operation, and how it was obtained."""

    name: str
    kind: str
    bound: float
    method: str


@dataclass(frozen=True)
class LipschitzBound:
    """A provable upper bound of the L2 Lipschitz constant of the whole audited function."""

    value: float
    layers: tuple[LayerBound, ...]
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": self.method,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }


class UnsupportedLayer(ModelError):
    """A layer whose Lipschitz constant SegAudit cannot bound from its weights.

    ``layer`` is the qualified name (``""`` for the root), ``kind`` its type or operation.
    """

    def __init__(self, layer: str, kind: str, reason: str) -> None:
        self.layer = layer
        self.kind = kind
        self.reason = reason
        shown = layer or "<root>"
        super().__init__(
            f"no provable Lipschitz bound for layer {shown!r} ({kind}): {reason}. "
            f"{SUPPORTED}; otherwise {_ADVICE}"
        )


class _Refuse(Exception):
    """Raised by per-layer code; the caller adds the layer's name and type."""


# --------------------------------------------------------------------------------------
# Per-operator bounds
# --------------------------------------------------------------------------------------


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    if len(items) == 1:
        return (items[0], items[0])
    if len(items) != 2:
        raise _Refuse(f"expected a pair of integers, got {value!r}")
    return (items[0], items[1])


def _spectral_norm(matrix: torch.Tensor) -> float:
    """Largest singular value of a real or complex matrix, inflated by SVD_MARGIN.

    An SVD is backward stable: its largest singular value is exact to a few ulps of the
    norm, far below the margin.  Very large matrices use Gram iteration instead
    (``||A||^2 <= ||(A^T A)^(2^j)||_F^(2^-j)``), an upper bound by construction.
    """
    m = matrix
    if m.numel() == 0:
        return 0.0
    if min(m.shape[-2:]) <= 2048:
        return float(torch.linalg.matrix_norm(m, ord=2).max()) * (1 + SVD_MARGIN)
    gram = m.mH @ m if m.shape[-2] >= m.shape[-1] else m @ m.mH
    log_scale = 0.0
    power = 1
    for _ in range(6):
        norm = float(torch.linalg.matrix_norm(gram, ord="fro"))
        if norm == 0:
            return 0.0
        gram = gram / norm
        log_scale += math.log(norm) / power
        gram = gram @ gram
        power *= 2
    log_bound = log_scale + math.log(float(torch.linalg.matrix_norm(gram, ord="fro"))) / power
    return math.exp(0.5 * log_bound) * (1 + SVD_MARGIN)


def _affordable(points: int, c_out: int, c_in: int) -> bool:
    return (
        points * c_out * c_in * min(c_out, c_in) <= _WORK_BUDGET
        and points * c_out * c_in <= _MEMORY_BUDGET
    )


def _dilate(w: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    if dilation == (1, 1):
        return w
    c_out, c_in, k_h, k_w = w.shape
    out = w.new_zeros(c_out, c_in, (k_h - 1) * dilation[0] + 1, (k_w - 1) * dilation[1] + 1)
    out[:, :, :: dilation[0], :: dilation[1]] = w
    return out


def _grid_max(w: torch.Tensor, grid: tuple[int, int]) -> float:
    """``max ||K^(w)||_2`` over the DFT grid of size ``grid``; kernels larger than the grid
    are folded (taps wrap around), which gives the symbol at the grid frequencies exactly."""
    c_out, c_in, k_h, k_w = w.shape
    n_h, n_w = grid
    folded = w.new_zeros(c_out, c_in, n_h, n_w)
    for a in range(k_h):
        for b in range(k_w):
            folded[:, :, a % n_h, b % n_w] += w[:, :, a, b]
    symbol = torch.fft.fft2(folded).permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(symbol, ord=2).max())


def _kernel_bound(
    w: torch.Tensor, dilation: tuple[int, int], torus: tuple[int, int] | None
) -> tuple[float, str]:
    """Upper bound of one (group's) convolution: whole plane, or the given torus."""
    c_out, c_in, k_h, k_w = w.shape
    if not bool(w.abs().max() > 0):
        return 0.0, "zero kernel"
    if k_h == k_w == 1:
        return _spectral_norm(w[:, :, 0, 0]), "exact SVD of the 1x1 kernel (float64)"
    best = conv_norm_upper_bound(w)
    how = "weighted Schur test (float64)"
    if not _affordable(64, c_out, c_in):
        return best, how  # wide layers: DFT refinements would cost too much
    # A lower estimate of the whole-plane norm: if Schur is already within 0.1% of it,
    # nothing below would tighten the bound by more than that.
    if best <= _grid_max(w, (8, 8)) * (1 + _TIGHT):
        return best, how
    if torus is not None and _affordable(torus[0] * torus[1], c_out, c_in):
        exact = _grid_max(_dilate(w, dilation), torus) * (1 + SVD_MARGIN)
        if exact < best:
            best = exact
            how = f"exact DFT symbol on the {torus[0]}x{torus[1]} torus holding the layer"
        return best, how
    degree = (k_h - 1) + (k_w - 1)
    for n in (16, 32, 64, 128, 256):
        shrink = math.pi * degree / n
        if n < max(k_h, k_w) or shrink >= 0.5:
            continue
        if not _affordable(n * n, c_out, c_in):
            break
        grid = _grid_max(w, (n, n))
        bound = grid / math.sqrt(1 - shrink) * (1 + SVD_MARGIN)
        if bound < best:
            best = bound
            how = f"DFT symbol on a {n}x{n} grid with Bernstein's inequality (float64)"
        if bound <= grid * 1.01:
            break
    return best, how


def _padding_amounts(padding: Any, extent: tuple[int, int]) -> tuple[int, int]:
    """Largest padding on one side and total padding, per axis, as (max_h, max_w)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            return (extent[0] // 2, extent[1] // 2)
        raise _Refuse(f"unknown padding {padding!r}")
    return _pair(padding)


def _total_padding(padding: Any, extent: tuple[int, int]) -> tuple[int, int]:
    if isinstance(padding, str):
        return (0, 0) if padding == "valid" else (extent[0] - 1, extent[1] - 1)
    p = _pair(padding)
    return (2 * p[0], 2 * p[1])


def _polyphase(w: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """The stride-1 kernel acting on the ``s_h s_w`` phases of the input.

    On the whole plane, ``y[i] = sum_u K[u] x[s i + u]`` with ``u = s a + b`` reads phase
    ``x_b[j] = x[s j + b]`` at ``j = i + a``: a strided convolution is a stride-1 convolution
    with kernel ``K'[b][a] = K[s a + b]`` after a permutation of the input (PixelUnshuffle),
    so both have the same norm.  The stride-1 kernel would only bound it from above.
    """
    s_h, s_w = stride
    c_out, c_in, e_h, e_w = w.shape
    a_h, a_w = -(-e_h // s_h), -(-e_w // s_w)
    padded = w.new_zeros(c_out, c_in, a_h * s_h, a_w * s_w)
    padded[:, :, :e_h, :e_w] = w
    # [o, c, a_h, b_h, a_w, b_w] -> [o, (b_h, b_w, c), a_h, a_w]
    phases = padded.reshape(c_out, c_in, a_h, s_h, a_w, s_w).permute(0, 3, 5, 1, 2, 4)
    return phases.reshape(c_out, s_h * s_w * c_in, a_h, a_w)


def conv_bound(
    weight: torch.Tensor,
    *,
    groups: int = 1,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    in_hw: tuple[int, int] | None = None,
    out_hw: tuple[int, int] | None = None,
) -> tuple[float, str]:
    """Upper bound of the L2 operator norm of a 2-D convolution, and how it was obtained.

    ``weight`` has PyTorch's layout for the layer (``ConvTranspose2d``: in x out/groups; a
    transposed convolution is the adjoint of the convolution with the same arguments).
    ``in_hw``/``out_hw`` (the layer's input and output sizes) allow a tighter bound that
    holds at that size only; without them the bound holds for every input size.
    """
    w = _f64(weight)
    if w.dim() != 4:
        raise _Refuse(f"expected a 4-D kernel, got shape {tuple(w.shape)}")
    dil, step = _pair(dilation), _pair(stride)
    extent = ((w.shape[2] - 1) * dil[0] + 1, (w.shape[3] - 1) * dil[1] + 1)
    if padding_mode in ("reflect", "replicate"):
        raise _Refuse(
            f"padding_mode={padding_mode!r} copies border pixels, so the layer's norm can "
            "exceed its kernel's (1.8x measured on one such '1-Lipschitz' layer); use zeros "
            "or circular padding"
        )
    if padding_mode not in ("zeros", "circular"):
        raise _Refuse(f"unknown padding_mode {padding_mode!r}")
    if groups < 1 or w.shape[0] % groups:
        raise _Refuse(f"{w.shape[0]} kernels cannot form {groups} groups")
    # The convolution's own input size (for a transposed one, that of its adjoint).
    base = out_hw if transposed else in_hw
    polyphase = step != (1, 1)
    torus: tuple[int, int] | None = None
    if padding_mode == "circular":
        total = _total_padding(padding, extent)
        if total[0] > extent[0] - 1 or total[1] > extent[1] - 1:
            raise _Refuse(
                f"circular padding {padding!r} is wider than the kernel's reach, so output "
                "rows repeat; use padding <= (kernel - 1) / 2"
            )
        # Output rows are distinct rows of the stride-1 circular convolution on the input
        # torus; with a stride that divides the size, the phases are tori themselves.
        if base is not None and base[0] % step[0] == 0 and base[1] % step[1] == 0:
            torus = (base[0] // step[0], base[1] // step[1])
        else:
            polyphase = False
            torus = base
    elif base is not None:
        # The padded input in phase space, plus room for the kernel: no wrap-around.
        pad = _padding_amounts(padding, extent)
        torus = tuple(  # type: ignore[assignment]
            -(-(base[i] + 2 * pad[i]) // step[i]) + -(-extent[i] // step[i]) + 1 for i in (0, 1)
        )
    per_group = w.shape[0] // groups
    results = []
    for g in range(groups):
        kernel = w[g * per_group : (g + 1) * per_group]
        if polyphase:
            results.append(_kernel_bound(_polyphase(_dilate(kernel, dil), step), (1, 1), torus))
        else:
            results.append(_kernel_bound(kernel, dil, torus))
    bound, how = max(results, key=lambda r: r[0])
    if polyphase:
        how = f"polyphase kernel of the stride-{step[0]}x{step[1]} convolution: {how}"
    if groups > 1:
        how = f"max over {groups} groups (block-diagonal) of: {how}"
    if transposed:
        how = f"adjoint of a convolution: {how}"
    if padding_mode == "circular":
        how = f"circular padding: {how}"
    return bound, how


def linear_bound(weight: torch.Tensor) -> tuple[float, str]:
    """Exact spectral norm of a ``Linear`` weight (block-diagonal over batch dimensions)."""
    return _spectral_norm(_f64(weight)), "exact SVD (float64)"


def batchnorm_bound(
    weight: torch.Tensor | None, running_var: torch.Tensor | None, eps: float
) -> tuple[float, str]:
    """``max |gamma| / sqrt(running_var + eps)``: eval-mode BatchNorm is a diagonal affine map."""
    if running_var is None:
        raise _Refuse("it normalises with batch statistics (no running statistics)")
    scale = (_f64(running_var) + eps).rsqrt()
    if weight is not None:
        scale = scale * _f64(weight).abs()
    return float(scale.max()), "max |gamma| / sqrt(running_var + eps) (float64)"


def maxpool_bound(kernel: Any, stride: Any, dilation: Any) -> tuple[float, str]:
    """``sqrt(c_h c_w)`` with ``c`` the most windows containing one pixel, per axis."""
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, []) else k
    d = _pair(dilation)
    counts = [min(k[i], math.ceil(((k[i] - 1) * d[i] + 1) / s[i])) for i in (0, 1)]
    how = f"sqrt of the most windows holding one pixel ({counts[0]}x{counts[1]})"
    return math.sqrt(counts[0] * counts[1]), how


def _axis_matrix(op: Callable[[torch.Tensor], torch.Tensor], n: int, axis: int) -> torch.Tensor:
    eye = torch.eye(n, dtype=torch.float64)
    basis = eye.reshape(n, 1, n, 1) if axis == 0 else eye.reshape(n, 1, 1, n)
    return op(basis).reshape(n, -1).T


def separable_bound(
    op: Callable[[torch.Tensor], torch.Tensor],
    op_h: Callable[[torch.Tensor], torch.Tensor],
    op_w: Callable[[torch.Tensor], torch.Tensor],
    in_hw: tuple[int, int],
) -> float:
    """Exact norm of a separable linear map ``X -> A_h X A_w^T`` (``||A_h|| ||A_w||``).

    ``op`` is the 2-D operator on ``N x 1 x H x W`` float64 tensors, ``op_h``/``op_w`` the same
    operator restricted to one axis.  The factorisation is checked on a random input first,
    so an operator that is not separable is refused rather than mis-bounded.
    """
    h, w = in_hw
    a_h = _axis_matrix(op_h, h, 0)
    a_w = _axis_matrix(op_w, w, 1)
    x = torch.randn(1, 1, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = op(x)[0, 0]
    factored = a_h @ x[0, 0] @ a_w.T
    if full.shape != factored.shape or not torch.allclose(full, factored, rtol=1e-9, atol=1e-9):
        raise _Refuse("the operator is not separable per axis as expected")
    return _spectral_norm(a_h) * _spectral_norm(a_w)


def resize_bound(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    *,
    mode: str = "bilinear",
    align_corners: bool | None = None,
    scale_factor: Sequence[float] | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> tuple[float, str]:
    """Exact norm (per-axis SVD) of ``F.interpolate`` from ``in_hw`` to ``out_hw``."""
    if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic", "area"):
        raise _Refuse(f"interpolation mode {mode!r}")
    extra: dict[str, Any] = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        extra["align_corners"] = align_corners
        extra["antialias"] = antialias

    def call(t: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None):
        if scale is not None and not recompute_scale_factor:
            return F.interpolate(t, scale_factor=scale, **extra)
        return F.interpolate(t, size=size, **extra)

    sf = (float(scale_factor[0]), float(scale_factor[-1])) if scale_factor else None
    bound = separable_bound(
        lambda t: call(t, out_hw, sf),
        lambda t: call(t, (out_hw[0], 1), (sf[0], 1.0) if sf else None),
        lambda t: call(t, (1, out_hw[1]), (1.0, sf[1]) if sf else None),
        in_hw,
    )
    size = f"{in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}"
    return bound, f"exact norm of the {mode} resize {size} (per-axis SVD, float64)"


def avgpool_bound(
    kernel: Any,
    stride: Any,
    padding: Any,
    *,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    in_hw: tuple[int, int] | None,
) -> tuple[float, str]:
    """Average pooling: Schur test for the plain layer, exact per-axis norms at a known size."""
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, []) else k
    p = _pair(padding)
    plain = not ceil_mode and divisor_override is None and (count_include_pad or p == (0, 0))
    best: float | None = None
    how = ""
    if plain:
        # Every weight is 1/(k_h k_w): rows sum to <= 1, columns to <= c_h c_w / (k_h k_w).
        c = [math.ceil(k[i] / s[i]) for i in (0, 1)]
        best = math.sqrt(c[0] * c[1] / (k[0] * k[1]))
        how = "Schur test: sqrt(ceil(k/s)^2 / k^2) per axis product"
    if in_hw is not None and divisor_override is None:
        common = {"ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
        exact = separable_bound(
            lambda t: F.avg_pool2d(t, k, s, p, **common),
            lambda t: F.avg_pool2d(t, (k[0], 1), (s[0], 1), (p[0], 0), **common),
            lambda t: F.avg_pool2d(t, (1, k[1]), (1, s[1]), (0, p[1]), **common),
            in_hw,
        )
        if best is None or exact < best:
            best, how = exact, f"exact norm at {in_hw[0]}x{in_hw[1]} (per-axis SVD)"
    if best is None:
        raise _Refuse(
            "average pooling with ceil_mode, uncounted padding or a divisor override needs "
            "the input size (pass input_size)"
        )
    return best, how


def adaptive_avgpool_bound(
    in_hw: tuple[int, int] | None, out_hw: tuple[int, int]
) -> tuple[float, str]:
    if in_hw is None:
        if out_hw == (1, 1):
            return 1.0, "global average: 1/sqrt(HW) <= 1"
        raise _Refuse("adaptive average pooling needs the input size (pass input_size)")
    bound = separable_bound(
        lambda t: F.adaptive_avg_pool2d(t, out_hw),
        lambda t: F.adaptive_avg_pool2d(t, (out_hw[0], 1)),
        lambda t: F.adaptive_avg_pool2d(t, (1, out_hw[1])),
        in_hw,
    )
    return bound, f"exact norm at {in_hw[0]}x{in_hw[1]} (per-axis SVD)"


_GELU = 1 + 1 / math.sqrt(2 * math.pi * math.e) + 1e-6
_SILU = 1.2297
_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def activation_bound(name: str, params: Mapping[str, Any]) -> tuple[float, str]:
    """Lipschitz constant (sup of |derivative|) of an elementwise activation."""
    if name in ("relu", "relu6", "tanh", "hardtanh", "softplus", "softsign", "abs", "clamp"):
        return 1.0, "1-Lipschitz elementwise"
    if name in ("log_sigmoid", "logsigmoid", "celu"):
        return 1.0, "1-Lipschitz elementwise"
    if name == "sigmoid":
        return 0.25, "sigmoid' <= 1/4"
    # PyTorch computes these with the float32 constant 1/6 (a few 1e-8 above): covered.
    if name == "hardsigmoid":
        return 1 / 6 * (1 + 1e-6), "slope 1/6"
    if name == "hardswish":
        return 1.5 * (1 + 1e-6), "hardswish' <= 3/2"
    if name == "leaky_relu":
        slope = float(params.get("negative_slope", 0.01))
        return max(1.0, abs(slope)), "max(1, |negative slope|)"
    if name == "prelu":
        slopes = _f64(params["weight"]).abs()
        return max(1.0, float(slopes.max())), "max(1, max |slope|)"
    if name == "elu":
        alpha = float(params.get("alpha", 1.0))
        scale = abs(float(params.get("scale", 1.0)))
        input_scale = abs(float(params.get("input_scale", 1.0)))
        # scale * x for x > 0, scale * alpha * (exp(input_scale * x) - 1) below
        bound = scale * max(1.0, abs(alpha) * input_scale)
        return bound, "scale * max(1, |alpha| * input_scale)"
    if name == "selu":
        return _SELU_SCALE * _SELU_ALPHA, "scale * alpha"
    if name == "gelu":
        if params.get("approximate", "none") != "none":
            raise _Refuse("the tanh approximation of GELU has no proven constant here")
        return _GELU, "Phi(x) + x phi(x) <= 1 + phi(1)"
    if name == "silu":
        return _SILU, "sigmoid(x) + x sigmoid'(x) <= 1 + 0.22964"
    raise _Refuse(f"no known Lipschitz constant for activation {name!r}")


# --------------------------------------------------------------------------------------
# Graph propagation
# --------------------------------------------------------------------------------------


@dataclass
class _V:
    """What is known of one value: its Lipschitz bound w.r.t. the input, None if constant."""

    lip: float | None
    parts: tuple[_V, ...] | None = None
    #: (split id, piece index, pieces, dim, source's bound) for pieces of chunk/split
    piece: tuple[int, int, int, int, float] | None = None
    #: ("maximum"|"minimum", piece a, piece b) for the MaxMin pattern
    pair: tuple[str, tuple, tuple] | None = None

    @property
    def dep(self) -> bool:
        return self.lip is not None


_CONST = _V(None)
_SPLIT_IDS = itertools.count()


@dataclass
class _Dep:
    """An input-dependent argument: its bound and its shape at the probe."""

    v: _V
    shape: tuple[int, ...] | None


@dataclass
class _Ctx:
    sized: bool
    layers: list[LayerBound] = field(default_factory=list)
    size_specific: list[str] = field(default_factory=list)

    def add(self, name: str, kind: str, bound: float, how: str) -> None:
        self.layers.append(LayerBound(name, kind, float(bound), how))


@dataclass
class _Call:
    """One operation with its arguments resolved: constants as values, inputs as _Dep."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    source: str  # "torch" (functions, methods, modules) or "aten"
    out_shape: Any
    where: str
    kind: str

    def get(self, index: int, key: str, default: Any = None) -> Any:
        if key in self.kwargs:
            return self.kwargs[key]
        if index < len(self.args):
            return self.args[index]
        return default

    def const(self, index: int, key: str, default: Any = None) -> Any:
        value = self.get(index, key, default)
        if _contains_dep(value):
            raise _Refuse(f"argument {key!r} depends on the input")
        return value

    def tensor(self, index: int = 0, key: str = "input") -> _Dep:
        value = self.get(index, key)
        if not isinstance(value, _Dep):
            raise _Refuse(f"argument {key!r} is not an input-dependent tensor")
        return value


def _contains_dep(value: Any) -> bool:
    if isinstance(value, _Dep):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_dep(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_dep(v) for v in value.values())
    return False


def _deps(value: Any) -> list[_Dep]:
    if isinstance(value, _Dep):
        return [value]
    if isinstance(value, (list, tuple)):
        return [d for v in value for d in _deps(v)]
    if isinstance(value, dict):
        return [d for v in value.values() for d in _deps(v)]
    return []


def _hw(shape: Any) -> tuple[int, int] | None:
    if isinstance(shape, tuple) and len(shape) >= 2:
        return (int(shape[-2]), int(shape[-1]))
    return None


def _numel(shape: Any) -> int:
    return math.prod(int(s) for s in shape) if shape is not None else 0


def _broadcast_factor(dep: _Dep, out_shape: Any) -> float:
    """sqrt of how often broadcasting repeats each entry of ``dep`` in the output."""
    if dep.shape is None or out_shape is None or tuple(dep.shape) == tuple(out_shape):
        return 1.0
    return math.sqrt(max(1, _numel(out_shape) // max(1, _numel(dep.shape))))


def _scale_of(value: Any, *, inverse: bool) -> float:
    """max |c| (or 1 / min |c|) of a constant scalar or tensor."""
    if isinstance(value, bool) or value is None:
        raise _Refuse(f"cannot scale by {value!r}")
    if isinstance(value, (int, float)):
        mags = torch.tensor([abs(float(value))], dtype=torch.float64)
    elif isinstance(value, torch.Tensor):
        mags = _f64(value).abs().flatten()
    else:
        raise _Refuse(f"cannot scale by {type(value).__name__}")
    if mags.numel() == 0:
        return 0.0
    if inverse:
        low = float(mags.min())
        if low == 0:
            raise _Refuse("division by a constant that contains 0")
        return 1.0 / low
    return float(mags.max())


# Ops that only move, copy without repetition, or cast entries: bound 1.
_PERMUTATIONS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "clone", "squeeze", "unsqueeze", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "movedim", "alias", "_unsafe_view", "view_as", "reshape_as", "detach", "float",
    "double", "to", "type_as", "identity", "lift_fresh_copy", "_to_copy",
    "slice", "select", "narrow", "positive", "neg", "negative", "flip", "roll",
}  # fmt: skip
_REPEATS = {"expand", "expand_as", "repeat", "tile", "broadcast_to"}
_SPLITS = {"chunk", "split", "split_with_sizes", "unbind", "tensor_split"}
_ELEMENTWISE = {
    "relu", "relu6", "tanh", "hardtanh", "softplus", "softsign", "abs", "clamp", "clip",
    "sigmoid", "hardsigmoid", "hardswish", "leaky_relu", "prelu", "elu", "selu", "celu",
    "gelu", "silu", "log_sigmoid", "logsigmoid",
}  # fmt: skip
_MULTI_OPERAND = {
    "add", "sub", "mul", "div", "truediv", "maximum", "minimum", "cat", "concat",
    "concatenate", "stack", "getitem",
}  # fmt: skip
_SHAPE_QUERIES = {"size", "dim", "numel", "sym_size", "sym_numel", "sym_stride", "stride"}


def _aten_name(target: Any) -> str:
    return target.overloadpacket.__name__


def _is_inplace(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_") and name != "_"


def _bound_call(call: _Call, ctx: _Ctx) -> _V:
    """The bound of one operation on its (resolved) arguments."""
    name = call.name
    deps = _deps((call.args, call.kwargs))
    if not deps:
        return _CONST
    if name in _SHAPE_QUERIES:
        return _CONST
    if call.out_shape is not None and _is_tensor_shape(call.out_shape):
        dtype = call.out_shape.dtype if isinstance(call.out_shape, _Shape) else None
        if dtype is not None and not dtype.is_floating_point:
            raise _Refuse(f"it produces {dtype} values from the input (not Lipschitz)")
    handler = _HANDLERS.get(name)
    if handler is None:
        raise _Refuse(f"operation {name!r} has no known Lipschitz bound")
    if name not in _MULTI_OPERAND and len(deps) != 1:
        # e.g. a convolution whose kernel or bias is computed from the input
        raise _Refuse("more than one argument depends on the input")
    return handler(call, ctx)


class _Shape(tuple):
    """A tensor shape recorded at the probe, with its dtype."""

    dtype: torch.dtype

    def __new__(cls, shape: Sequence[int], dtype: torch.dtype) -> _Shape:
        obj = super().__new__(cls, (int(s) for s in shape))
        obj.dtype = dtype
        return obj


def _is_tensor_shape(value: Any) -> bool:
    return isinstance(value, _Shape)


def _only_dep(call: _Call) -> _Dep:
    deps = _deps((call.args, call.kwargs))
    if len(deps) != 1:
        raise _Refuse("several input-dependent operands where one was expected")
    return deps[0]


def _h_permutation(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    if call.name in ("slice", "select", "narrow") or _numel(call.out_shape) <= _numel(dep.shape):
        return _V(dep.v.lip)
    raise _Refuse("it outputs more entries than it reads")


def _h_repeat(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    factor = math.sqrt(max(1, _numel(call.out_shape) // max(1, _numel(dep.shape))))
    return _V(dep.v.lip * factor)


def _h_split(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    pieces = len(call.out_shape) if isinstance(call.out_shape, (list, tuple)) else 0
    if not pieces or _is_tensor_shape(call.out_shape):
        raise _Refuse("unexpected output of a split")
    dim = call.const(1, "dim", 0) if call.name == "unbind" else call.const(2, "dim", 0)
    ndim = len(dep.shape) if dep.shape is not None else 0
    dim = int(dim) % ndim if ndim else int(dim)
    token = next(_SPLIT_IDS)
    parts = tuple(_V(dep.v.lip, piece=(token, i, pieces, dim, dep.v.lip)) for i in range(pieces))
    return _V(dep.v.lip, parts=parts)


def _h_getitem(call: _Call, ctx: _Ctx) -> _V:
    container = call.args[0]
    index = call.args[1]
    if _contains_dep(index):
        raise _Refuse("indexing with input-dependent indices")
    if isinstance(container, _Dep) and container.v.parts is not None:
        return container.v.parts[index]
    if isinstance(container, (list, tuple)):
        item = container[index]
        return item.v if isinstance(item, _Dep) else _CONST
    if isinstance(container, _Dep) and container.shape is not None:
        items = index if isinstance(index, tuple) else (index,)
        basic = all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)
        if not basic:
            raise _Refuse("advanced indexing can repeat entries")
        return _V(container.v.lip)
    raise _Refuse("unexpected indexing")


def _h_cat(call: _Call, ctx: _Ctx) -> _V:
    tensors = call.get(0, "tensors")
    if not isinstance(tensors, (list, tuple)):
        raise _Refuse("unexpected arguments")
    items = [t for t in tensors if isinstance(t, _Dep)]
    if len(items) != len(_deps((call.args, call.kwargs))):
        raise _Refuse("unexpected arguments")
    if len(items) == 2:
        matched = _maxmin_pattern(items[0].v, items[1].v)
        if matched is not None:
            ctx.add(call.where, "MaxMin", 1.0, "max/min of two chunk halves: 1-Lipschitz")
            return _V(matched)
    return _V(math.sqrt(sum(t.v.lip**2 for t in items)))


def _maxmin_pattern(a: _V, b: _V) -> float | None:
    """cat([maximum(p, q), minimum(p, q)]) with p, q the halves of one 2-way split."""
    if a.pair is None or b.pair is None or {a.pair[0], b.pair[0]} != {"maximum", "minimum"}:
        return None
    if {a.pair[1], a.pair[2]} != {b.pair[1], b.pair[2]} or a.pair[1] == a.pair[2]:
        return None
    p, q = a.pair[1], a.pair[2]
    if p[0] != q[0] or p[2] != 2 or {p[1], q[1]} != {0, 1}:
        return None
    return p[4]


def _operands(call: _Call) -> tuple[Any, Any]:
    """The two operands of a binary op; every input-dependent argument must be one of them."""
    a, b = call.get(0, "input"), call.get(1, "other")
    found = sum(isinstance(x, _Dep) for x in (a, b))
    if found != len(_deps((call.args, call.kwargs))):
        raise _Refuse("unexpected arguments")
    return a, b


def _h_maxmin_binary(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    lip = 0.0
    for item in (a, b):
        if isinstance(item, _Dep):
            lip += (item.v.lip * _broadcast_factor(item, call.out_shape)) ** 2
    result = _V(math.sqrt(lip))
    if isinstance(a, _Dep) and isinstance(b, _Dep) and a.v.piece and b.v.piece:
        same_shape = a.shape is not None and tuple(a.shape) == tuple(b.shape or ())
        if same_shape:
            result.pair = (call.name, a.v.piece, b.v.piece)
    return result


def _h_add(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    alpha = call.const(2, "alpha", 1)
    lip = 0.0
    if isinstance(a, _Dep):
        lip += a.v.lip * _broadcast_factor(a, call.out_shape)
    if isinstance(b, _Dep):
        lip += b.v.lip * _broadcast_factor(b, call.out_shape) * abs(float(alpha))
    if _contains_dep(alpha):
        raise _Refuse("input-dependent alpha")
    return _V(lip)


def _h_mul(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    if isinstance(a, _Dep) and isinstance(b, _Dep):
        raise _Refuse("it multiplies two input-dependent tensors (not globally Lipschitz)")
    dep, const = (a, b) if isinstance(a, _Dep) else (b, a)
    factor = _scale_of(const, inverse=False)
    return _V(dep.v.lip * factor * _broadcast_factor(dep, call.out_shape))


def _h_div(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    if isinstance(b, _Dep):
        raise _Refuse("it divides by an input-dependent tensor")
    if call.kwargs.get("rounding_mode") is not None:
        raise _Refuse("rounding division is not continuous")
    factor = _scale_of(b, inverse=True)
    return _V(a.v.lip * factor * _broadcast_factor(a, call.out_shape))


def _h_activation(call: _Call, ctx: _Ctx) -> _V:
    name = call.name.rstrip("_") if _is_inplace(call.name) else call.name
    params: dict[str, Any] = {}
    if name == "leaky_relu":
        params["negative_slope"] = call.const(1, "negative_slope", 0.01)
    elif name == "elu":
        params["alpha"] = call.const(1, "alpha", 1.0)
        if call.source == "aten":
            params["scale"] = call.const(2, "scale", 1.0)
            params["input_scale"] = call.const(3, "input_scale", 1.0)
    elif name == "celu":
        params["alpha"] = call.const(1, "alpha", 1.0)
    elif name == "gelu":
        params["approximate"] = call.const(1, "approximate", "none")
    elif name == "prelu":
        params["weight"] = call.const(1, "weight")
    elif name in ("clamp", "clip", "hardtanh"):
        for i, key in ((1, "min"), (2, "max")):
            call.const(i, key)
        name = "clamp"
    factor, how = activation_bound(name, params)
    dep = _only_dep(call)
    ctx.add(call.where, call.kind, factor, how)
    return _V(dep.v.lip * factor)


def _h_conv(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    weight = call.const(1, "weight")
    if not isinstance(weight, torch.Tensor):
        raise _Refuse("the kernel is not a constant tensor")
    if call.name == "conv_transpose2d":
        stride, padding = call.const(3, "stride", 1), call.const(4, "padding", 0)
        groups, dilation = call.const(6, "groups", 1), call.const(7, "dilation", 1)
        transposed = True
    elif call.name in ("convolution", "_convolution"):
        stride, padding = call.const(3, "stride", 1), call.const(4, "padding", 0)
        dilation, transposed = call.const(5, "dilation", 1), call.const(6, "transposed", False)
        groups = call.const(8, "groups", 1)
    else:
        stride, padding = call.const(3, "stride", 1), call.const(4, "padding", 0)
        dilation, groups = call.const(5, "dilation", 1), call.const(6, "groups", 1)
        transposed = False
    if weight.dim() != 4:
        raise _Refuse("only 2-D convolutions are supported")
    padding_mode = call.kwargs.get("__padding_mode__", "zeros")
    bound, how = _conv_with_size(
        ctx,
        weight,
        groups=int(groups),
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        transposed=bool(transposed),
        in_shape=dep.shape,
        out_shape=call.out_shape,
    )
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _conv_with_size(
    ctx: _Ctx, weight: torch.Tensor, *, in_shape: Any, out_shape: Any, **kwargs: Any
) -> tuple[float, str]:
    in_hw = _hw(in_shape) if ctx.sized else None
    out_hw = _hw(out_shape) if ctx.sized else None
    bound, how = conv_bound(weight, in_hw=in_hw, out_hw=out_hw, **kwargs)
    if "torus" in how:
        ctx.size_specific.append("convolution norms at the layers' sizes")
    return bound, how


def _h_linear(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    weight = call.const(1, "weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise _Refuse("the weight is not a constant matrix")
    bound, how = linear_bound(weight)
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_batch_norm(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    if call.source == "torch":  # F.batch_norm(input, running_mean, running_var, weight, ...)
        running_var, weight = call.const(2, "running_var"), call.const(3, "weight")
        training, eps = call.const(5, "training", False), call.const(7, "eps", 1e-5)
    elif call.name == "_native_batch_norm_legit_no_training":
        weight, running_var = call.const(1, "weight"), call.const(4, "running_var")
        training, eps = False, call.const(6, "eps", 1e-5)
    else:  # aten::batch_norm(input, weight, bias, running_mean, running_var, training, ...)
        weight, running_var = call.const(1, "weight"), call.const(4, "running_var")
        training, eps = call.const(5, "training", False), call.const(7, "eps", 1e-5)
    if training:
        raise _Refuse("BatchNorm in training mode uses batch statistics; call eval()")
    bound, how = batchnorm_bound(weight, running_var, float(eps))
    ctx.add(call.where, call.kind, bound, how)
    v = _V(dep.v.lip * bound)
    if call.name == "_native_batch_norm_legit_no_training":
        return _V(v.lip, parts=(v, _CONST, _CONST))
    return v


def _h_dropout(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    if call.const(2, "train" if call.source == "aten" else "training", False) and float(
        call.const(1, "p", 0.5)
    ):
        raise _Refuse("dropout in training mode; call eval()")
    return _V(dep.v.lip)


def _h_max_pool(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    kernel = call.const(1, "kernel_size")
    stride = call.const(2, "stride", None)
    dilation = call.const(4, "dilation", 1)
    if call.source == "torch" and call.const(6, "return_indices", False):
        raise _Refuse("max pooling that returns indices")
    bound, how = maxpool_bound(kernel, stride, dilation)
    ctx.add(call.where, call.kind, bound, how)
    v = _V(dep.v.lip * bound)
    if call.name == "max_pool2d_with_indices":
        return _V(v.lip, parts=(v, _CONST))
    return v


def _h_avg_pool(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    in_hw = _hw(dep.shape) if ctx.sized else None
    bound, how = avgpool_bound(
        call.const(1, "kernel_size"),
        call.const(2, "stride", None),
        call.const(3, "padding", 0),
        ceil_mode=bool(call.const(4, "ceil_mode", False)),
        count_include_pad=bool(call.const(5, "count_include_pad", True)),
        divisor_override=call.const(6, "divisor_override", None),
        in_hw=in_hw,
    )
    if "exact" in how:
        ctx.size_specific.append("average pooling")
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_adaptive_avg_pool(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    out_hw = _hw(call.out_shape)
    if out_hw is None:
        raise _Refuse("unexpected output")
    in_hw = _hw(dep.shape) if ctx.sized else None
    bound, how = adaptive_avgpool_bound(in_hw, out_hw)
    if in_hw is not None:
        ctx.size_specific.append("adaptive average pooling")
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_mean(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    # A mean over n entries has norm 1/sqrt(n) <= 1.
    count = max(1, _numel(dep.shape) // max(1, _numel(call.out_shape)))
    bound = 1 / math.sqrt(count) if ctx.sized else 1.0
    if ctx.sized:
        ctx.size_specific.append("means")
    ctx.add(call.where, call.kind, bound, "mean over n entries: 1/sqrt(n)")
    return _V(dep.v.lip * bound)


def _h_interpolate(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    in_hw, out_hw = _hw(dep.shape), _hw(call.out_shape)
    if dep.shape is None or len(dep.shape) != 4 or in_hw is None or out_hw is None:
        raise _Refuse("only 2-D (N x C x H x W) interpolation is supported")
    if not ctx.sized:
        raise _Refuse("the norm of a resize depends on the input size (pass input_size)")
    if call.source == "torch":
        mode = call.const(3, "mode", "nearest")
        align = call.const(4, "align_corners", None)
        scale = call.const(2, "scale_factor", None)
        recompute = call.const(5, "recompute_scale_factor", None)
        antialias = bool(call.const(6, "antialias", False))
        if call.get(1, "size") is not None:
            scale = None
    else:
        mode = {
            "upsample_bilinear2d": "bilinear",
            "upsample_bicubic2d": "bicubic",
            "upsample_nearest2d": "nearest",
            "_upsample_nearest_exact2d": "nearest-exact",
            "_upsample_bilinear2d_aa": "bilinear",
            "_upsample_bicubic2d_aa": "bicubic",
        }[call.name]
        antialias = call.name.endswith("_aa")
        if mode in ("bilinear", "bicubic"):
            align, scale = call.const(2, "align_corners", False), call.const(3, "scale_factors")
        else:
            align, scale = None, call.const(2, "scale_factors")
        if call.const(1, "output_size") is not None:
            scale = None
        recompute = None
    if isinstance(scale, (int, float)):
        scale = (float(scale), float(scale))
    if mode == "bilinear" and align is None:
        align = False
    bound, how = resize_bound(
        in_hw,
        out_hw,
        mode=mode,
        align_corners=align,
        scale_factor=scale,
        recompute_scale_factor=recompute,
        antialias=antialias,
    )
    ctx.size_specific.append("interpolation")
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_pad(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    mode = call.const(2, "mode", "constant")
    if mode != "constant":
        raise _Refuse(f"{mode} padding copies entries (refused like reflect-padded convs)")
    return _V(dep.v.lip)


_HANDLERS: dict[str, Callable[[_Call, _Ctx], _V]] = {}
for _name in _PERMUTATIONS:
    _HANDLERS[_name] = _h_permutation
for _name in _REPEATS:
    _HANDLERS[_name] = _h_repeat
for _name in _SPLITS:
    _HANDLERS[_name] = _h_split
for _name in _ELEMENTWISE:
    _HANDLERS[_name] = _h_activation
_HANDLERS.update(
    {
        "getitem": _h_getitem,
        "cat": _h_cat,
        "concat": _h_cat,
        "concatenate": _h_cat,
        "stack": _h_cat,
        "add": _h_add,
        "sub": _h_add,
        "maximum": _h_maxmin_binary,
        "minimum": _h_maxmin_binary,
        "mul": _h_mul,
        "div": _h_div,
        "truediv": _h_div,
        "conv2d": _h_conv,
        "conv_transpose2d": _h_conv,
        "convolution": _h_conv,
        "_convolution": _h_conv,
        "linear": _h_linear,
        "batch_norm": _h_batch_norm,
        "_native_batch_norm_legit_no_training": _h_batch_norm,
        "dropout": _h_dropout,
        "feature_dropout": _h_dropout,
        "max_pool2d": _h_max_pool,
        "max_pool2d_with_indices": _h_max_pool,
        "avg_pool2d": _h_avg_pool,
        "adaptive_avg_pool2d": _h_adaptive_avg_pool,
        "mean": _h_mean,
        "interpolate": _h_interpolate,
        "upsample_bilinear2d": _h_interpolate,
        "upsample_bicubic2d": _h_interpolate,
        "upsample_nearest2d": _h_interpolate,
        "_upsample_nearest_exact2d": _h_interpolate,
        "_upsample_bilinear2d_aa": _h_interpolate,
        "_upsample_bicubic2d_aa": _h_interpolate,
        "pad": _h_pad,
        "constant_pad_nd": _h_pad,
    }
)
# Python operators and torch functions under their own names.
_FUNCTION_NAMES: dict[Any, str] = {
    operator.add: "add",
    operator.sub: "sub",
    operator.mul: "mul",
    operator.truediv: "div",
    operator.neg: "neg",
    operator.pos: "positive",
    operator.getitem: "getitem",
    getattr: "getattr",
    F.interpolate: "interpolate",
    F.upsample: "interpolate",
    F.relu: "relu",
    F.relu6: "relu6",
    F.batch_norm: "batch_norm",
    F.dropout: "dropout",
    F.dropout2d: "dropout",
    F.max_pool2d: "max_pool2d",
    F.pad: "pad",
}


def _function_name(target: Any) -> str | None:
    if target in _FUNCTION_NAMES:
        return _FUNCTION_NAMES[target]
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None)
    if name and (module.startswith("torch") or module in ("_operator", "operator")):
        return name
    return None


# --------------------------------------------------------------------------------------
# Modules as leaves
# --------------------------------------------------------------------------------------

_LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    MaxMin,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Upsample,
)


def _leaf_type(module: nn.Module) -> type[nn.Module] | None:
    """The supported type ``module`` behaves as, or None (its forward is overridden)."""
    for base in _LEAF_TYPES:
        if isinstance(module, base):
            cls = type(module)
            # A subclass that overrides forward may compute anything: trace through it.
            # Parametrised layers (torch.nn.utils.parametrize) keep the base forward.
            methods = ("forward", "_conv_forward") if base is nn.Conv2d else ("forward",)
            if all(getattr(cls, m, None) is getattr(base, m, None) for m in methods):
                return base
            return None
    return None


def _module_call(module: nn.Module, dep: _Dep, out_shape: Any, where: str, kind: str) -> _Call:
    """Express a supported module as the equivalent functional call."""
    base = _leaf_type(module)
    m: Any = module

    def call(name: str, *args: Any, **kwargs: Any) -> _Call:
        return _Call(name, (dep, *args), kwargs, "torch", out_shape, where, kind)

    if base is nn.Conv2d:
        return call(
            "conv2d",
            m.weight,
            None,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            __padding_mode__=m.padding_mode,
        )
    if base is nn.ConvTranspose2d:
        if m.padding_mode != "zeros":
            raise _Refuse(f"padding_mode={m.padding_mode!r}")
        return call(
            "conv_transpose2d", m.weight, None, m.stride, m.padding, m.output_padding,
            m.groups, m.dilation,
        )  # fmt: skip
    if base is nn.Linear:
        return call("linear", m.weight)
    if base is nn.modules.batchnorm._BatchNorm:
        uses_batch_stats = m.training or m.running_var is None
        return call("batch_norm", m.running_mean, m.running_var, m.weight, m.bias,
                    uses_batch_stats, m.momentum, m.eps)  # fmt: skip
    if base in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        return call("dropout", m.p, m.training)
    if base in (nn.Identity, nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten):
        return call("identity")
    if base is MaxMin:
        if dep.shape is None or len(dep.shape) < 2 or dep.shape[1] % 2:
            raise _Refuse("MaxMin needs an even number of channels")
        return call("__maxmin__")
    if base is nn.MaxPool2d:
        if m.return_indices:
            raise _Refuse("max pooling that returns indices")
        return call("max_pool2d", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if base is nn.AvgPool2d:
        return call("avg_pool2d", m.kernel_size, m.stride, m.padding, m.ceil_mode,
                    m.count_include_pad, m.divisor_override)  # fmt: skip
    if base is nn.AdaptiveAvgPool2d:
        return call("adaptive_avg_pool2d", m.output_size)
    if base is nn.Upsample:
        return call("interpolate", m.size, m.scale_factor, m.mode, m.align_corners,
                    m.recompute_scale_factor)  # fmt: skip
    activation = {
        nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
        nn.Hardsigmoid: "hardsigmoid", nn.Hardswish: "hardswish", nn.Softplus: "softplus",
        nn.Softsign: "softsign", nn.LogSigmoid: "log_sigmoid", nn.SELU: "selu",
        nn.SiLU: "silu",
    }  # fmt: skip
    if base in activation:
        return call(activation[base])
    if base is nn.LeakyReLU:
        return call("leaky_relu", m.negative_slope)
    if base is nn.PReLU:
        return call("prelu", m.weight)
    if base is nn.ELU:
        return call("elu", m.alpha)
    if base is nn.CELU:
        return call("celu", m.alpha)
    if base is nn.GELU:
        return call("gelu", approximate=m.approximate)
    if base is nn.Hardtanh:
        return call("hardtanh", m.min_val, m.max_val)
    raise _Refuse("unsupported module")


def _h_module_identity(call: _Call, ctx: _Ctx) -> _V:
    ctx.add(call.where, call.kind, 1.0, "permutation or identity")
    return _V(call.tensor(0).v.lip)


def _h_module_maxmin(call: _Call, ctx: _Ctx) -> _V:
    ctx.add(call.where, call.kind, 1.0, "GroupSort of pairs: 1-Lipschitz")
    return _V(call.tensor(0).v.lip)


_HANDLERS["identity"] = _h_module_identity
_HANDLERS["__maxmin__"] = _h_module_maxmin


# --------------------------------------------------------------------------------------
# fx graphs (eager modules and torch.export programs)
# --------------------------------------------------------------------------------------


class _LeafTracer(fx.Tracer):
    """Keeps supported layers as call_module leaves; traces through everything else."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _leaf_type(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _Probe(fx.Interpreter):
    """Runs the graph once and keeps, per node, the value of constants (weights, sizes)
    and the shape of input-dependent tensors."""

    def __init__(self, gm: fx.GraphModule, dependent: set[fx.Node]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.dependent = dependent
        self.seen: dict[fx.Node, Any] = {}

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        # torch.export's shape guards pin the capture size; the bound is checked at ours.
        if str(target).startswith("_guards"):
            return None
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.seen[n] = _summarise(result, keep_tensors=n not in self.dependent)
        return result


_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


#: results that depend on the input's shape only (zeros, ones and fills like it)
_LIKE = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like"}


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_QUERIES or node.target in _LIKE
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
    if isinstance(node.target, torch._ops.OpOverload):
        return _aten_name(node.target) in _SHAPE_QUERIES | _LIKE
    name = _function_name(node.target)
    return name in _LIKE


def _dependent_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value changes with the input's values (shapes are fixed, so shape
    queries and everything computed from weights and sizes alone are constants)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    dependent: set[fx.Node] = set(placeholders[:1])
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output") or _is_shape_query(node):
            continue
        if any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _summarise(value: Any, *, keep_tensors: bool) -> Any:
    if isinstance(value, torch.Tensor):
        return value if keep_tensors else _Shape(value.shape, value.dtype)
    if isinstance(value, torch.Size):
        return tuple(int(s) for s in value)
    if isinstance(value, (list, tuple)):
        return type(value)(_summarise(v, keep_tensors=keep_tensors) for v in value)
    return value


def _owner(node: fx.Node, root_kind: str) -> tuple[str, str]:
    """(qualified name, type name) of the module a node belongs to."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        qualname, kind = list(stack.values())[-1]
        kind_name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
        return str(qualname), kind_name
    return "", root_kind


def _fx_bound(
    gm: fx.GraphModule, root: nn.Module, probe: torch.Tensor, ctx: _Ctx
) -> list[tuple[float, tuple[int, ...]]]:
    """Propagate bounds through ``gm``; returns (bound, shape) of each output tensor."""
    dependent = _dependent_nodes(gm)
    runner = _Probe(gm, dependent)
    try:
        with torch.no_grad():
            runner.run(probe)
    except Exception as exc:
        raise _probe_failure(root, probe, exc) from exc
    seen = runner.seen
    values: dict[fx.Node, _V] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    root_kind = type(root).__name__
    output_value: Any = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values[node] = _V(1.0) if node is placeholders[0] else _CONST
            continue
        if node.op == "get_attr":
            values[node] = _CONST
            continue
        if node.op == "output":
            output_value = node.args[0]
            continue
        if not node.users and node.op == "call_module" and str(node.target).startswith("_guards"):
            continue
        if node not in dependent:
            values[node] = _CONST
            continue
        values[node] = _fx_node(node, gm, seen, values, ctx, root_kind)
    outputs = []
    for n in _nodes_in(output_value):
        v, shape = values[n], seen.get(n)
        if v.dep:
            outputs.append((v.lip, tuple(shape) if _is_tensor_shape(shape) else ()))
    return outputs


def _nodes_in(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _nodes_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _nodes_in(v)


def _fx_node(
    node: fx.Node,
    gm: fx.GraphModule,
    seen: Mapping[fx.Node, Any],
    values: Mapping[fx.Node, _V],
    ctx: _Ctx,
    root_kind: str,
) -> _V:
    def resolve(a: Any) -> Any:
        if isinstance(a, fx.Node):
            v = values[a]
            if v.dep:
                shape = seen.get(a)
                return _Dep(v, shape if _is_tensor_shape(shape) else None)
            return seen.get(a)
        if isinstance(a, (list, tuple)):
            return type(a)(resolve(x) for x in a)
        if isinstance(a, dict):
            return {k: resolve(x) for k, x in a.items()}
        return a

    args = resolve(tuple(node.args))
    kwargs = resolve(dict(node.kwargs))
    out_shape = seen.get(node)
    if not _contains_dep((args, kwargs)):
        return _CONST
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        where, kind = str(node.target), type(module).__name__
        source = "torch"
    else:
        owner, owner_kind = _owner(node, root_kind)
        where, kind = owner, owner_kind
        source = "torch"
    try:
        if node.op == "call_module":
            dep = args[0] if args and isinstance(args[0], _Dep) else None
            if dep is None or len(_deps((args, kwargs))) != 1:
                raise _Refuse("expected one input tensor")
            if _leaf_type(module) is None:
                raise _Refuse("no known Lipschitz bound for this module type")
            _check_inplace(node, getattr(module, "inplace", False))
            call = _module_call(module, dep, out_shape, where, kind)
            return _bound_call(call, ctx)
        if node.op == "call_method":
            name = str(node.target)
        elif isinstance(node.target, torch._ops.OpOverload):
            name = _aten_name(node.target)
            source = "aten"
        else:
            name = _function_name(node.target)
            if name is None:
                raise _Refuse(f"unknown function {node.target!r}")
        if source == "torch":
            args, kwargs = _normalise_torch_args(node, args, kwargs)
        _check_inplace(node, _is_inplace(name) or kwargs.pop("inplace", False) is True)
        if _is_inplace(name):
            name = name[:-1]
        label = f"{where}/{node.name}" if where else node.name
        call = _Call(name, args, kwargs, source, out_shape, label, name)
        return _bound_call(call, ctx)
    except _Refuse as exc:
        if node.op == "call_module":
            raise UnsupportedLayer(where, kind, str(exc)) from None
        raise UnsupportedLayer(
            where, kind, f"operation {_op_label(node)!r} (node {node.name}): {exc}"
        ) from None


def _op_label(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)
    return _function_name(node.target) or repr(node.target)


def _normalise_torch_args(
    node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Bind a Python-level function's arguments to their names (``F.elu(x, 1.0)``).

    Handlers look an argument up by name first, then by its position in the ATen schema;
    builtins (``torch.cat``, ``F.conv2d``) and tensor methods follow ATen's order already,
    but Python-level ``F.*`` functions may not, so their arguments are passed by name.
    """
    if node.op != "call_function" or getattr(node.target, "__module__", "") != F.__name__:
        return args, kwargs
    try:
        signature = inspect.signature(node.target)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds or inspect.Parameter.VAR_KEYWORD in kinds:
        return args, kwargs
    named = dict(bound.arguments)
    first = next(iter(signature.parameters))
    head = named.pop(first)
    return (head,), named


def _check_inplace(node: fx.Node, inplace: bool) -> None:
    """An in-place op changes its input for every other user: only safe if there are none."""
    if not inplace:
        return
    current = node.args[0] if node.args else None
    while isinstance(current, fx.Node):
        if len(current.users) > 1:
            raise _Refuse("in-place operation on a tensor that is used elsewhere")
        if current.op == "placeholder" or not current.args:
            break
        current = current.args[0]


# --------------------------------------------------------------------------------------
# TorchScript: chains of submodules whose leaves hold one supported operation
# --------------------------------------------------------------------------------------

_TS_IGNORED = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::ListUnpack"}


def _ts_bound(
    module: torch.jit.ScriptModule, name: str, x: torch.Tensor, ctx: _Ctx
) -> tuple[float, torch.Tensor]:
    """Bound of a TorchScript module applied to ``x``; returns (bound, output)."""
    kind = getattr(module, "original_name", type(module).__name__)
    graph = module.graph
    nodes = [n for n in graph.nodes() if n.kind() not in _TS_IGNORED]
    if any(n.kind() == "prim::CallMethod" for n in nodes):
        order = _ts_chain(module, graph, nodes)
        if order is None:
            others = sorted({n.kind() for n in nodes if n.kind() != "prim::CallMethod"})
            raise UnsupportedLayer(
                name,
                kind,
                "this TorchScript module is not a plain chain of submodules"
                + (f" (it also computes {', '.join(others)})" if others else "")
                + "; a traced graph hides residual sums and concatenations from a layer-by-"
                "layer reading, so SegAudit bounds TorchScript models only when every "
                "container is sequential. Save the model with torch.export (whose graph "
                "SegAudit reads), pass the eager nn.Module, or state the constant as a claim",
            )
        total = 1.0
        for child_name in order:
            child = getattr(module, child_name)
            qual = f"{name}.{child_name}" if name else child_name
            bound, x = _ts_bound(child, qual, x, ctx)
            total *= bound
        return total, x
    with torch.no_grad():
        y = module(x)
    if not isinstance(y, torch.Tensor):
        raise UnsupportedLayer(name, kind, "it does not return one tensor")
    try:
        bound, how = _ts_leaf(module, nodes, x, y, ctx, name, kind)
    except _Refuse as exc:
        raise UnsupportedLayer(name, kind, str(exc)) from None
    ctx.add(name, kind, bound, how)
    return bound, y


def _ts_chain(module: Any, graph: Any, nodes: list[Any]) -> list[str] | None:
    """Child names in call order if the graph is exactly x -> child_1 -> ... -> output."""
    inputs = list(graph.inputs())
    if len(inputs) != 2:
        return None
    current = inputs[1]
    order: list[str] = []
    for node in nodes:
        if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
            return None
        ins = list(node.inputs())
        owner = ins[0].node()
        if len(ins) != 2 or ins[1] is not current or owner.kind() != "prim::GetAttr":
            return None
        if next(owner.inputs()) is not inputs[0]:
            return None
        order.append(owner.s("name"))
        current = node.output()
    outputs = list(graph.outputs())
    if len(outputs) != 1 or outputs[0] is not current:
        return None
    return order


def _ts_const(value: Any, module: Any, graph_input: Any) -> Any:
    node = value.node()
    kind = node.kind()
    if value is graph_input:
        return _INPUT
    if kind == "prim::Constant":
        return value.toIValue()
    if kind == "prim::ListConstruct":
        return [_ts_const(v, module, graph_input) for v in node.inputs()]
    if kind == "prim::GetAttr":
        owner = next(node.inputs())
        if owner.node().kind() == "prim::Param":
            return getattr(module, node.s("name"))
        return getattr(_ts_const(owner, module, graph_input), node.s("name"))
    raise _Refuse(f"argument computed by {kind}")


_INPUT = object()


def _reads_input(value: Any) -> bool:
    if value is _INPUT:
        return True
    if isinstance(value, (list, tuple)):
        return any(_reads_input(v) for v in value)
    return False


def _ts_leaf(
    module: Any, nodes: list[Any], x: torch.Tensor, y: torch.Tensor, ctx: _Ctx, name: str, kind: str
) -> tuple[float, str]:
    graph = module.graph
    graph_input = list(graph.inputs())[1]
    graph_output = next(iter(graph.outputs()))
    kinds = [n.kind() for n in nodes]
    in_shape = _Shape(x.shape, x.dtype)
    out_shape = _Shape(y.shape, y.dtype)
    if not nodes:
        if graph_output is not graph_input:
            raise _Refuse("unexpected graph")
        return 1.0, "identity"
    if kinds == ["aten::chunk", "aten::maximum", "aten::minimum", "aten::cat"]:
        return _ts_maxmin(nodes, graph_input, graph_output, x)
    padding_mode = "zeros"
    if kinds == ["aten::pad", "aten::_convolution"]:
        pad, conv = nodes
        pads = _ts_const(list(pad.inputs())[1], module, graph_input)
        mode = _ts_const(list(pad.inputs())[2], module, graph_input)
        conv_in = next(iter(conv.inputs()))
        if next(pad.inputs()) is not graph_input or conv_in is not pad.output():
            raise _Refuse("unexpected graph")
        if mode != "circular" or len(pads) != 4 or pads[0] != pads[1] or pads[2] != pads[3]:
            raise _Refuse(f"padding mode {mode!r} {pads} before the convolution")
        padding_mode = "circular"
        circular = (pads[2], pads[0])
        nodes = [conv]
    if len(nodes) != 1:
        raise _Refuse(f"its graph computes {', '.join(kinds)}; one supported operation expected")
    node = nodes[0]
    if node.output() is not graph_output:
        raise _Refuse("unexpected graph")
    op = node.kind().split("::", 1)[-1]
    if _is_inplace(op):
        op = op[:-1]
    raw = list(node.inputs())
    args: list[Any] = [
        _INPUT if padding_mode == "circular" else _ts_const(raw[0], module, graph_input)
    ]
    args += [_ts_const(value, module, graph_input) for value in raw[1:]]
    if args[0] is not _INPUT or _reads_input(args[1:]):
        raise _Refuse("the operation must read the module's input once, as first argument")
    dep = _Dep(_V(1.0), in_shape)
    args[0] = dep
    kwargs: dict[str, Any] = {}
    if padding_mode == "circular":
        if op != "_convolution" or _pair(args[4]) != (0, 0):
            raise _Refuse("unexpected padded convolution")
        args[4] = list(circular)
        kwargs["__padding_mode__"] = "circular"
    call = _Call(op, tuple(args), kwargs, "aten", out_shape, name, kind)
    if op not in _HANDLERS:
        raise _Refuse(f"operation {node.kind()} has no known Lipschitz bound")
    if op in _SPLITS or op in ("getitem", "cat", "concat", "stack"):
        raise _Refuse(f"operation {node.kind()} as a layer")
    sub_ctx = _Ctx(sized=ctx.sized)
    value = _HANDLERS[op](call, sub_ctx)
    ctx.size_specific.extend(sub_ctx.size_specific)
    how = sub_ctx.layers[-1].method if sub_ctx.layers else "permutation or identity"
    if value.lip is None:
        raise _Refuse("unexpected graph")
    return value.lip, how


def _ts_maxmin(nodes: list[Any], graph_input: Any, graph_output: Any, x: torch.Tensor):
    chunk, maximum, minimum, cat = nodes
    chunk_ins = list(chunk.inputs())
    if chunk_ins[0] is not graph_input or chunk_ins[1].toIValue() != 2:
        raise _Refuse("unexpected MaxMin graph")
    dim = chunk_ins[2].toIValue()
    if x.dim() == 0 or x.shape[dim] % 2:
        raise _Refuse("MaxMin needs an even number of channels")
    unpack = next(iter(chunk.output().uses())).user
    if unpack.kind() != "prim::ListUnpack" or len(list(chunk.output().uses())) != 1:
        raise _Refuse("unexpected MaxMin graph")
    halves = list(unpack.outputs())
    for op in (maximum, minimum):
        if set(op.inputs()) != set(halves) or len(list(op.inputs())) != 2:
            raise _Refuse("unexpected MaxMin graph")
    cat_ins = list(cat.inputs())
    listed = cat_ins[0].node()
    if listed.kind() != "prim::ListConstruct" or cat_ins[1].toIValue() != dim:
        raise _Refuse("unexpected MaxMin graph")
    members = list(listed.inputs())
    if {m.node() for m in members} != {maximum, minimum} or len(members) != 2:
        raise _Refuse("unexpected MaxMin graph")
    if cat.output() is not graph_output:
        raise _Refuse("unexpected MaxMin graph")
    return 1.0, "max/min of two chunk halves (GroupSort 2): 1-Lipschitz"


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def lipschitz_bound(
    module: nn.Module, *, input_size: tuple[int, int] | None = None
) -> LipschitzBound:
    """A provable upper bound of the L2 Lipschitz constant of ``module`` on ``N x 3 x H x W``.

    ``module`` is usually the :class:`SegmentationWrapper` the harness audits (normalisation
    and output resize included); a bare model is bounded as is.  ``input_size`` (H, W), else
    the wrapper's metadata ``input_size``, fixes the size at which size-dependent parts
    (resizes, circular convolutions, pooling at borders) are bounded; without either, those
    are refused and the bound holds for every input size.  Raises :class:`UnsupportedLayer`
    naming the first layer it cannot bound.
    """
    if input_size is not None and (
        len(input_size) != 2 or any(not isinstance(v, int) or v < 1 for v in input_size)
    ):
        raise ValueError(f"input_size must be (H, W) with positive integers, got {input_size!r}")
    wrapper = module if isinstance(module, SegmentationWrapper) else None
    model = wrapper.model if wrapper is not None else module
    size = input_size
    size_source = "given"
    if size is None and wrapper is not None and wrapper.metadata.input_size is not None:
        size = tuple(wrapper.metadata.input_size)
        size_source = "from the model's metadata"
    ctx = _Ctx(sized=size is not None)
    probe_hw = tuple(int(s) for s in size) if size is not None else DEFAULT_PROBE_SIZE
    probe = _probe_input(model, probe_hw)
    factor = 1.0
    parts: list[str] = []
    if wrapper is not None and wrapper.normalises:
        std = _f64(wrapper.std).abs()
        if float(std.min()) == 0:
            raise UnsupportedLayer("", "SegmentationWrapper", "a normalisation std of 0")
        factor = 1.0 / float(std.min())
        ctx.add("<normalisation>", "SegmentationWrapper", factor, "(x - mean) / std: 1 / min |std|")
        parts.append(f"normalisation 1/min(std) = {factor:.6g}")
    outputs, how = _model_bound(model, probe, ctx)
    parts.append(how)
    value = 0.0
    resizes: dict[tuple[int, int], float] = {}
    for lip, shape in outputs:
        if wrapper is not None and len(shape) == 4 and tuple(shape[-2:]) != probe_hw:
            low = (int(shape[-2]), int(shape[-1]))
            if low not in resizes:
                resizes[low] = _wrapper_resize(low, probe_hw, ctx)
            lip *= resizes[low]
        value = max(value, lip)
    if resizes:
        parts.append(f"bilinear resize of the logits x{max(resizes.values()):.6g}")
    value *= factor
    if ctx.size_specific:
        kinds = ", ".join(dict.fromkeys(ctx.size_specific))
        validity = f"holds at input size {probe_hw[0]}x{probe_hw[1]} ({size_source}) only ({kinds})"
    else:
        validity = "holds for every input size"
    method = "; ".join([*parts, validity])
    return LipschitzBound(value=float(value), layers=tuple(ctx.layers), method=method)


def _wrapper_resize(low: tuple[int, int], hw: tuple[int, int], ctx: _Ctx) -> float:
    """Norm of the wrapper's bilinear resize of low-resolution logits to the input size."""
    if not ctx.sized:
        raise UnsupportedLayer(
            "<resize>",
            "SegmentationWrapper",
            f"the model predicts at {low[0]}x{low[1]} for a {hw[0]}x{hw[1]} input and the "
            "wrapper resizes its logits; the norm of that resize depends on the input size: "
            "pass input_size (or set the metadata's input_size)",
        )
    try:
        resize, how = resize_bound(low, hw, mode="bilinear", align_corners=False)
    except _Refuse as exc:
        raise UnsupportedLayer("<resize>", "SegmentationWrapper", str(exc)) from None
    ctx.add("<resize>", "SegmentationWrapper", resize, how)
    ctx.size_specific.append("the wrapper's resize of the logits")
    return resize


def _probe_input(model: nn.Module, hw: tuple[int, int]) -> torch.Tensor:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, 3, *hw, dtype=dtype, device=device)


def _model_bound(
    model: nn.Module, probe: torch.Tensor, ctx: _Ctx
) -> tuple[list[tuple[float, tuple[int, ...]]], str]:
    """(bound, shape) of each output tensor of the bare model, and how they were found."""
    if isinstance(model, torch.jit.ScriptModule):
        training = torchscript_training_ops(model)
        if training:
            raise UnsupportedLayer(
                "", getattr(model, "original_name", "ScriptModule"),
                f"it was captured in training mode ({training[0]}); call eval() before tracing",
            )  # fmt: skip
        if isinstance(model, torch.jit.TopLevelTracedModule):
            # Freshly traced modules refuse calls to their submodules; a saved and reloaded
            # copy does not (files always load that way).
            buffer = io.BytesIO()
            torch.jit.save(model, buffer)
            buffer.seek(0)
            model = torch.jit.load(buffer, map_location=probe.device)
        try:
            bound, out = _ts_bound(model, "", probe, ctx)
        except UnsupportedLayer:
            raise
        except Exception as exc:
            raise _probe_failure(model, probe, exc) from exc
        return [(bound, tuple(out.shape))], "product over a TorchScript chain of layers"
    if isinstance(model, fx.GraphModule):
        _check_graph_training(model)
        outputs = _fx_bound(model, model, probe, ctx)
        return outputs, "propagated through the model's fx/ATen graph"
    _check_module_training(model)
    if _leaf_type(model) is not None:
        # The tracer never keeps the root as a leaf; a container lets it see the layer.
        model = nn.Sequential(model)
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:
        raise UnsupportedLayer(
            "",
            type(model).__name__,
            f"torch.fx cannot trace it ({type(exc).__name__}: {exc}); data-dependent control "
            "flow needs an export",
        ) from exc
    gm = fx.GraphModule(model, graph)
    _check_trace_faithful(model, gm, probe)
    outputs = _fx_bound(gm, model, probe, ctx)
    how = "propagated through the model's torch.fx graph (layers multiply, sums add)"
    return outputs, how


def _check_module_training(model: nn.Module) -> None:
    """Refuse before running anything: a probe would update BatchNorm statistics."""
    for qualname, sub in model.named_modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0:
            raise UnsupportedLayer(
                qualname, type(sub).__name__, "dropout in training mode; call eval()"
            )
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and (
            sub.training or sub.running_var is None
        ):
            raise UnsupportedLayer(
                qualname, type(sub).__name__,
                "BatchNorm in training mode (or without running statistics) normalises with "
                "batch statistics; call eval()",
            )  # fmt: skip


def _check_graph_training(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        for position, arg in enumerate(target._schema.arguments):
            if arg.name not in ("training", "train"):
                continue
            value = (
                node.args[position]
                if position < len(node.args)
                else node.kwargs.get(arg.name, arg.default_value)
            )
            if value is True:
                where, kind = _owner(node, type(gm).__name__)
                raise UnsupportedLayer(
                    where, kind, f"{target} was captured in training mode; call eval() first"
                )


def _check_trace_faithful(model: nn.Module, gm: fx.GraphModule, probe: torch.Tensor) -> None:
    """The bound is computed on the traced graph: it must compute what the module computes."""
    x = torch.rand(probe.shape, generator=torch.Generator().manual_seed(0)).to(probe)
    with torch.no_grad():
        try:
            expected = model(x)
        except Exception as exc:
            raise _probe_failure(model, probe, exc) from exc
        got = gm(x)
    for a, b in zip(_tensors(expected), _tensors(got), strict=False):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise UnsupportedLayer(
                "",
                type(model).__name__,
                "its torch.fx trace does not reproduce its output (in-place updates or "
                "control flow the trace cannot see)",
            )


def _probe_failure(model: nn.Module, probe: torch.Tensor, exc: Exception) -> UnsupportedLayer:
    size = "x".join(str(s) for s in probe.shape[-2:])
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = getattr(model, "original_name", type(model).__name__)
    return UnsupportedLayer(
        "",
        kind,
        f"running it once on a 1 x 3 x {size} input, to learn its shapes, failed "
        f"({type(exc).__name__}: {detail}); pass an input size it accepts as input_size",
    )


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []

"""Operator norms of single layers: provable upper bounds from their weights.

Each function bounds the L2 operator norm (or Lipschitz constant) of one layer or
elementwise operation, and says how; one it cannot bound raises :class:`_Refuse`, which
the caller turns into an :class:`~audit.certify.lipschitz.values.UnsupportedLayer` naming
the layer.  Nothing here knows of graphs or models.

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
  weighted Schur test of :func:`conv_norm_upper_bound` and, where that is loose and cheap
  enough, by the maximum over an N x N DFT grid divided by
  ``sqrt(1 - pi (k_h + k_w - 2) / N)``: ``w -> z^H K^(w)^H K^(w) z`` is a trigonometric
  polynomial of degree ``k - 1`` per axis, so Bernstein's inequality bounds how far it can
  exceed its value at the nearest grid point.  When the input size is known, the exact
  maximum over the DFT grid of a torus large enough to hold the zero padding without
  wrap-around (or of the input torus, for circular padding) bounds the layer at that size.
  1x1 kernels: exact SVD.  Reflect and replicate padding read border pixels twice, so such
  a layer is not bounded by its kernel's norm (1.8x measured on one "1-Lipschitz" layer):
  the caller bounds the pad (:func:`pad_copies`) and the unpadded convolution apart.
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

``conv_norm_upper_bound`` evaluates the weighted Schur test (proved in
:mod:`audit.nets.demo_fcn`, whose AOL layers it bounds) for an arbitrary plain kernel (in
float64, with weights from power iteration), on the kernel and on its adjoint.  For an
orthogonal kernel the adjoint (or direct) autocorrelation is the identity, so the bound is
1 up to rounding.  ``MaxMin`` (GroupSort 2) is defined here, next to the constants of the
other activations, so that both the bound and the demo network use the one class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SVD_MARGIN",
    "MaxMin",
    "activation_bound",
    "adaptive_avgpool_bound",
    "avgpool_bound",
    "batchnorm_bound",
    "conv_bound",
    "conv_norm_upper_bound",
    "kernel_autocorrelation",
    "linear_bound",
    "maxpool_bound",
    "pad_copies",
    "resize_bound",
    "separable_bound",
]

#: relative inflation of every exact singular value (SVD, DFT symbol) against rounding
SVD_MARGIN = 1e-6
#: the Schur bound is accepted as is when within this factor of a grid lower estimate
_TIGHT = 1e-3
#: cost caps of the DFT refinement: grid points x c_out x c_in x min(c), and x c_out x c_in
_WORK_BUDGET = 2.5e8
_MEMORY_BUDGET = 4e6


class _Refuse(Exception):
    """Raised by per-layer code; the caller adds the layer's name and type."""


# --------------------------------------------------------------------------------------
# Layers with a constant of 1 by construction
# --------------------------------------------------------------------------------------


class MaxMin(nn.Module):
    """GroupSort with groups of two: channel halves (a, b) -> (max(a, b), min(a, b))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


# --------------------------------------------------------------------------------------
# The weighted Schur test of a convolution
# --------------------------------------------------------------------------------------


def kernel_autocorrelation(weight: torch.Tensor) -> torch.Tensor:
    """Return ``K^T * K`` as a C_in x C_in x (2k-1) x (2k-1) tensor.

    Entry ``[i, j, t]`` is ``sum_c sum_u K[c, i, u + t] K[c, j, u]``: the Gram operator of the
    convolution over the whole plane, between input channels i and j at spatial offset t.
    """
    k_h, k_w = weight.shape[-2:]
    kt = weight.transpose(0, 1)
    return F.conv2d(kt, kt, padding=(k_h - 1, k_w - 1))


def _schur_bound(weight: torch.Tensor, iterations: int) -> float:
    a = kernel_autocorrelation(weight).abs().sum(dim=(2, 3))
    q = torch.ones(a.shape[0], dtype=weight.dtype)
    for _ in range(iterations):
        nxt = a @ q
        norm = nxt.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        # The floor keeps q strictly positive, which the Schur test requires.
        q = (nxt / norm).clamp_min(1e-12)
    ratio = (a @ q) / q
    return math.sqrt(float(ratio.max()))


def conv_norm_upper_bound(weight: torch.Tensor, *, iterations: int = 200) -> float:
    """A provable upper bound of the L2 operator norm of a zero-padded convolution.

    Weighted Schur test in float64: ``sqrt(max_i (A q)_i / q_i)`` with ``A_ij = sum_t |(K^T *
    K)_{ij}(t)|`` and any positive ``q``.  The bound holds for every positive ``q``; power
    iteration on ``A`` only makes it tighter (towards the Perron root of ``A``), so its
    convergence does not matter for soundness.  Valid for every input size, any zero padding
    and any stride: each of those convolutions is a restriction of the one over the whole plane.

    The test is also applied to the adjoint (the transposed convolution, kernel flipped, with
    Gram ``K * K^T`` over output channels), which has the same norm, and the smaller of the two
    bounds is returned: a row-orthogonal layer with fewer outputs than inputs has ``K * K^T``
    equal to the identity but ``K^T * K`` only a projector, whose Schur bound is loose.
    """
    w = weight.detach().to(dtype=torch.float64, device="cpu")
    adjoint = w.flip(-2, -1).transpose(0, 1)
    return min(_schur_bound(w, iterations), _schur_bound(adjoint, iterations))


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
            f"padding_mode={padding_mode!r} copies border pixels; bound the pad and the "
            "unpadded convolution separately"
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


def pad_copies(mode: str, before: int, after: int, size: int | None) -> int:
    """The most copies of one entry that padding one axis of ``size`` entries makes.

    The padding is a 0/1 matrix with one 1 per row, so its norm is the square root of its
    largest column count (the product of the per-axis counts).  Counts never grow with the
    size, so ``size=None`` (every size) takes the smallest size the mode allows.
    """
    if before < 0 or after < 0:
        raise _Refuse("negative padding (cropping) of a circular/reflect/replicate pad")
    smallest = {"circular": max(before, after, 1), "reflect": max(before, after) + 1}
    if mode not in ("circular", "reflect", "replicate"):
        raise _Refuse(f"unknown padding mode {mode!r}")
    n = smallest.get(mode, 1) if size is None else size
    counts = [0] * n
    for j in range(-before, n + after):
        if mode == "circular":
            source = j % n
        elif mode == "reflect":
            period = 2 * (n - 1) if n > 1 else 1
            source = abs(j) % period if n > 1 else 0
            source = period - source if source >= n else source
        else:
            source = min(max(j, 0), n - 1)
        counts[source] += 1
    return max(counts)


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

"""Per-pixel Lipschitz certificates from one forward pass (Massena et al., reference section 3).

Setting.  The audited map ``x -> all logits`` (an N x 3 x H x W image in [0, 1] pixel space to
its N x K x H x W logit map) is assumed to be L-Lipschitz from L2 to L2.  The constant ``L``
must be an *upper* bound (computed from the weights, never a power-iteration estimate); this
module only turns it and the logits into certificates.

Why ``sqrt(2)``.  Let ``m_p = z_top1 - z_top2`` at pixel ``p``.  To make class ``j`` overtake
the predicted class ``y`` the output must move the pair ``(z_y, z_j)`` by a vector ``d`` with
``d_y - d_j <= -(z_y - z_j)``; the shortest such ``d`` has norm ``(z_y - z_j) / sqrt(2)`` >=
``m_p / sqrt(2)``.  The output moves by at most ``L * ||delta||_2``, so the prediction at ``p``
cannot change while ``||delta||_2 < m_p / (sqrt(2) L)``.  Equivalently, changing pixel ``p``
costs at least ``c_p = m_p^2 / 2`` of the squared output budget ``(L * eps)^2``: that cost is
what :mod:`audit.certify.joint` sums over pixels.

What is certified.  The *prediction* (argmax) is certified to stay put; whether it is correct
is a separate question (:mod:`audit.certify.joint` combines the two with labels).

Floating point.  Logits come from a float32 (or float64) forward pass whose rounding is not
covered by ``L``; every certificate therefore divides by ``(1 + kappa)`` with ``kappa`` about
1e-3, which makes "certified at eps" the same statement as ``m > sqrt(2) L eps (1 + kappa)``.
Margins are computed in float64 from logits cast explicitly; half-precision logits and calls
under autocast are refused, because their rounding (about 1e-3 to 4e-3 relative) is as large as
the safety factor itself.  Non-finite logits give a NaN radius, which is never certified.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence

import torch

__all__ = [
    "DEFAULT_KAPPA",
    "certified_radius",
    "check_lipschitz",
    "flip_costs",
    "is_certified",
    "output_budget",
    "refuse_autocast",
    "top2_margin",
]

#: relative safety factor for float32 rounding in the forward pass (reference section 3)
DEFAULT_KAPPA = 1e-3

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def refuse_autocast(device: torch.device | str) -> None:
    """Raise if autocast is active for ``device``'s type (or for CUDA).

    Certificates from autocast logits are unsound: the lower-precision matmuls introduce
    errors of order 1e-3 relative, the size of ``kappa``.  Refusing is cheaper than auditing
    which op ran in which precision.
    """
    device_type = torch.device(device).type
    for kind in sorted({device_type, "cuda"}):
        try:
            enabled = torch.is_autocast_enabled(kind)
        except RuntimeError:  # a device type autocast does not know (meta): nothing to refuse
            continue
        if enabled:
            raise RuntimeError(
                f"certificates refuse to run under autocast ({kind} autocast is enabled): "
                "compute the logits and margins in float32 or float64 outside torch.autocast"
            )


def check_lipschitz(lipschitz: float) -> float:
    """``lipschitz`` as a float, or ``ValueError`` unless it is finite and positive."""
    value = float(lipschitz)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"lipschitz must be a finite positive number, got {lipschitz!r}")
    return value


def _check_kappa(kappa: float) -> float:
    value = float(kappa)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
    return value


def top2_margin(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and top-1 minus top-2 logit gap per pixel, in float64.

    ``logits`` is N x K x H x W (K >= 2), float32 or float64.  Returns ``pred`` (N x H x W,
    int64, the argmax) and ``margin`` (N x H x W, float64, >= 0; NaN where a logit is NaN).
    The cast to float64 happens here, explicitly, so the margin subtraction adds no rounding
    of its own beyond float64's.
    """
    refuse_autocast(logits.device)
    if logits.dim() != 4:
        raise ValueError(f"expected N x K x H x W logits, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes for a margin, got K={logits.shape[1]}")
    if logits.dtype in _LOW_PRECISION:
        raise ValueError(
            f"logits in {logits.dtype} are too coarse for a certificate (rounding ~ kappa): "
            "run the model in float32 or float64"
        )
    if not logits.is_floating_point():
        raise TypeError(f"expected floating-point logits, got {logits.dtype}")
    key = _memo_key(logits)
    if key is not None and _LAST and _LAST[0][0]() is logits and _LAST[0][1] == key:
        # clones: a caller that changed a returned tensor in place must not change the next
        pred, margin = _LAST[0][2]
        return pred.clone(), margin.clone()
    z = logits.detach()
    # Selecting the two largest logits is exact in the logits' own precision, and the
    # difference of two float32 numbers is exact in float64: casting only the two selected
    # values gives the same margin as casting everything, at a fraction of the cost (topk
    # along the class axis is slow on CPU, and a full float64 copy costs memory traffic).
    top1, pred = z.max(dim=1)
    others = z.scatter(1, pred.unsqueeze(1), float("-inf"))
    top2 = others.amax(dim=1)  # the same value as max(dim=1), without indices: ~10x faster
    margin = top1.to(torch.float64) - top2.to(torch.float64)
    _LAST.clear()
    if key is not None:
        _LAST.append((weakref.ref(logits), key, (pred.clone(), margin.clone())))
    return pred, margin


#: the last :func:`top2_margin` computed: a certification asks it of the same logits four
#: times (pixel accuracy, fractions, radii, IoU), and the max over classes is most of its cost
_LAST: list[tuple[weakref.ref, tuple[int, int], tuple[torch.Tensor, torch.Tensor]]] = []


def _memo_key(logits: torch.Tensor) -> tuple[int, int] | None:
    """What must be unchanged for a remembered result to hold: the tensor's storage and its
    version counter (bumped by every in-place change); None where it cannot be known."""
    try:
        return logits.data_ptr(), logits._version
    except RuntimeError:  # inference-mode tensors keep no version counter
        return None


def flip_costs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and the least squared output displacement that changes it, ``m^2 / 2``.

    Non-finite margins cost 0: such a pixel is treated as freely flippable, never certified.
    """
    pred, margin = top2_margin(logits)
    cost = margin.square() / 2
    return pred, torch.where(torch.isfinite(cost), cost, torch.zeros_like(cost))


def output_budget(
    lipschitz: float,
    eps: float | Sequence[float] | torch.Tensor,
    *,
    kappa: float = DEFAULT_KAPPA,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Squared output budget ``(L (1 + kappa) eps)^2`` of an L2 attack of radius ``eps``.

    Returns a float64 tensor of ``eps``'s shape (a 0-d tensor for a scalar).  ``eps`` must be
    finite and >= 0; it is in [0, 1] pixel space, the units of ``L``.
    """
    lip = check_lipschitz(lipschitz) * (1.0 + _check_kappa(kappa))
    e = torch.as_tensor(eps, dtype=torch.float64, device=device)
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"epsilons must be finite and >= 0, got {e.tolist()}")
    return (lip * e).square()


def certified_radius(
    logits: torch.Tensor, lipschitz: float, *, kappa: float = DEFAULT_KAPPA
) -> torch.Tensor:
    """Per-pixel certified L2 radius ``m / (sqrt(2) L (1 + kappa))``, N x H x W float64.

    For every perturbation with ``||delta||_2`` strictly below the radius the *prediction* at
    that pixel stays the same (whether or not it is correct), provided the map from the image
    to all logits is ``lipschitz``-Lipschitz L2 -> L2.  A radius of 0 (a tie) or NaN (a
    non-finite logit) certifies nothing.
    """
    lip = check_lipschitz(lipschitz) * (1.0 + _check_kappa(kappa))
    _, margin = top2_margin(logits)
    return margin / (math.sqrt(2.0) * lip)


def is_certified(
    logits: torch.Tensor,
    lipschitz: float,
    eps: float | Sequence[float] | torch.Tensor,
    *,
    kappa: float = DEFAULT_KAPPA,
) -> torch.Tensor:
    """Whether each pixel's prediction is certified at L2 radius ``eps``.

    Defined as ``certified_radius(logits, lipschitz, kappa=kappa) > eps``, so the two never
    disagree; mathematically this is ``m > sqrt(2) L eps (1 + kappa)``.  A scalar ``eps`` gives
    an N x H x W bool tensor; a 1-D grid of E epsilons gives N x E x H x W.
    """
    radius = certified_radius(logits, lipschitz, kappa=kappa)
    e = torch.as_tensor(eps, dtype=torch.float64, device=radius.device)
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"epsilons must be finite and >= 0, got {e.tolist()}")
    if e.dim() == 0:
        return radius > e
    if e.dim() != 1:
        raise ValueError(f"eps must be a scalar or a 1-D grid, got shape {tuple(e.shape)}")
    return radius.unsqueeze(1) > e.view(1, -1, 1, 1)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Run the block with TF32 off: on Ampere and later GPUs PyTorch lets convolutions (and
    optionally matmuls) round their inputs to 10-bit mantissas, an error of about 1e-3 in the
    logits, as large as the certificates' safety factor.  Certificates and the search that
    tests a claimed constant must see the function in true float32."""
    cudnn = torch.backends.cudnn.allow_tf32
    matmul = torch.backends.cuda.matmul.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.set_float32_matmul_precision(precision)

"""Digital: brightness, contrast, saturation, elastic transform and pixelation.

Brightness and saturation are defined by the reference in HSV space (scikit-image's
conversions).  With hue and the other HSV coordinate held fixed every RGB channel is
affine in the changed one, so both are written here in closed form on RGB, without the
round trip: the same values up to float rounding, and differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audit.corruptions.base import Corruption, Params, gaussian_blur, uniform


def brightness(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Raise HSV value by ``shift`` (capped at 1): ``rgb * V' / V``; black becomes grey."""
    (shift,) = params
    value = x.amax(dim=1, keepdim=True)
    raised = (value + shift).clamp(max=1.0)
    safe = torch.where(value > 0, value, torch.ones_like(value))
    return torch.where(value > 0, x * (raised / safe), raised.expand_as(x))


def contrast(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Pull every channel towards its own mean over the image by ``factor``."""
    (factor,) = params
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


def saturate(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """HSV saturation ``S' = clip(S * scale + offset, 0, 1)``.

    Each channel is ``V - S * V * g`` with ``g`` in [0, 1] fixed by the hue, so ``g`` is
    recovered as ``(V - channel) / (V - min)``.  Grey pixels have hue 0 in scikit-image
    (red), which a positive ``offset`` makes visible: (V, V(1-S'), V(1-S')).
    """
    scale, offset = params
    value = x.amax(dim=1, keepdim=True)
    spread = value - x.amin(dim=1, keepdim=True)
    grey = spread <= 0
    s = torch.where(value > 0, spread / torch.where(value > 0, value, 1.0), 0.0)
    s_new = (s * scale + offset).clamp(0, 1)
    hue_red = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device)[None, :, None, None]
    g = torch.where(grey, hue_red, (value - x) / torch.where(grey, 1.0, spread))
    return value - s_new * value * g


def _reflect_coordinate(c: torch.Tensor, n: int) -> torch.Tensor:
    """scipy's ``reflect`` for coordinates: mirrored about -0.5 and n - 0.5."""
    period = 2 * n
    c = torch.remainder(c + 0.5, period)
    return torch.where(c < n, c, period - c) - 0.5


def _bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x`` (B x C x H x W) sampled at ``rows``, ``cols`` (B x H x W), order 1."""
    b, c, h, w = x.shape
    r = _reflect_coordinate(rows, h)
    q = _reflect_coordinate(cols, w)
    r0f, q0f = r.floor(), q.floor()
    fr, fq = (r - r0f).to(x.dtype)[:, None], (q - q0f).to(x.dtype)[:, None]
    # neighbours past the edge, after mirroring about the half pixel, are the edge itself
    r0, r1 = r0f.long().clamp(0, h - 1), (r0f.long() + 1).clamp(0, h - 1)
    q0, q1 = q0f.long().clamp(0, w - 1), (q0f.long() + 1).clamp(0, w - 1)
    flat = x.reshape(b, c, h * w)

    def at(ri: torch.Tensor, qi: torch.Tensor) -> torch.Tensor:
        index = (ri * w + qi).reshape(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, index).reshape(b, c, h, w)

    top = at(r0, q0) * (1 - fq) + at(r0, q1) * fq
    bottom = at(r1, q0) * (1 - fq) + at(r1, q1) * fq
    return top * (1 - fr) + bottom * fr


def elastic_transform(
    x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """Resample at a smooth random displacement field: uniform noise in
    ``+-0.005 * H`` pixels per axis, Gaussian-smoothed (deviation 1% of each side,
    truncated at 3, mirrored border), times ``alpha``; bilinear, mirrored border."""
    (alpha,) = params
    _b, _, h, w = x.shape
    amplitude = h * 0.005  # the reference uses the height for both axes
    field = (uniform(gens, (2, h, w), x).to(torch.float64) * 2 - 1) * amplitude
    field = gaussian_blur(field, (h * 0.01, w * 0.01), truncate=3.0, mode="reflect") * alpha
    rows = torch.arange(h, device=x.device, dtype=torch.float64)[:, None] + field[:, 1]
    cols = torch.arange(w, device=x.device, dtype=torch.float64)[None, :] + field[:, 0]
    return _bilinear(x, rows, cols)


def _box_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Pillow's ``BOX`` resampling as an ``n_out x n_in`` matrix: output ``o`` averages the
    input samples whose centres fall in ``[o, o + 1) * n_in / n_out``."""
    scale = n_in / n_out
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    support = 0.5 * max(scale, 1.0)
    lo = (centre - support + 0.5).floor().clamp(min=0)  # (int) truncation of a positive
    hi = (centre + support + 0.5).floor().clamp(max=n_in)
    i = torch.arange(n_in, dtype=torch.float64)[None]
    u = (i - centre[:, None] + 0.5) / max(scale, 1.0)
    weights = ((u >= -0.5) & (u < 0.5) & (i >= lo[:, None]) & (i < hi[:, None])).double()
    return (weights / weights.sum(dim=1, keepdim=True)).to(device)


def pixelate(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Shrink to ``factor`` of each side with Pillow's box filter, then enlarge back with
    nearest neighbours (Pillow samples the source at ``floor((o + 0.5) * n_in / n_out)``).
    Pillow rounds to 8 bits after each pass; here the values stay float."""
    (factor,) = params
    _, _, h, w = x.shape
    sh, sw = max(int(h * factor), 1), max(int(w * factor), 1)
    if (sh, sw) == (h, w):
        return x
    small = torch.einsum("oh,bchw->bcow", _box_weights(h, sh, x.device).to(x.dtype), x)
    small = torch.einsum("pw,bcow->bcop", _box_weights(w, sw, x.device).to(x.dtype), small)
    rows = ((torch.arange(h, device=x.device) + 0.5) * (sh / h)).floor().long().clamp(max=sh - 1)
    cols = ((torch.arange(w, device=x.device) + 0.5) * (sw / w)).floor().long().clamp(max=sw - 1)
    return small.index_select(2, rows).index_select(3, cols)


DIGITAL: tuple[Corruption, ...] = (
    Corruption(
        "brightness",
        "digital",
        True,
        True,
        brightness,
        ("shift",),
        ((0.0,), (0.1,), (0.2,), (0.3,), (0.4,), (0.5,)),
    ),
    Corruption(
        "contrast",
        "digital",
        True,
        True,
        contrast,
        ("factor",),
        ((1.0,), (0.4,), (0.3,), (0.2,), (0.1,), (0.05,)),
    ),
    Corruption(
        "elastic_transform",
        "digital",
        True,
        True,
        elastic_transform,
        ("alpha",),
        ((0.0,), (12.5,), (16.25,), (21.25,), (25.0,), (30.0,)),
    ),
    Corruption(
        "pixelate",
        "digital",
        True,
        True,
        pixelate,
        ("factor",),
        ((1.0,), (0.6,), (0.5,), (0.4,), (0.3,), (0.25,)),
    ),
    Corruption(
        "saturate",
        "digital",
        True,
        True,
        saturate,
        ("scale", "offset"),
        ((1.0, 0.0), (0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)),
    ),
)

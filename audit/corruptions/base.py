"""What a corruption is, how severities become parameters, and the filters they share.

A corruption is a pure function of a batch ``B x 3 x H x W`` in [0, 1], one parameter tuple
and one :class:`torch.Generator` per image.  Its parameters are a table of six rows: the
*identity parameters* (severity 0, which leave an image unchanged) and the reference's rows
for severities 1 to 5.  A fractional severity interpolates linearly between the two rows
around it, so a search can move continuously from "clean" to "severity 5".

The filters below reproduce the reference libraries' border rules exactly, because at the
small sizes a search uses, borders are a large part of the image:

=================  ========================================  ===========================
``mode``           sample beyond the edge                    reference
=================  ========================================  ===========================
``"nearest"``      the edge pixel (``aaa|abcd|ddd``)         scipy ``nearest``
``"reflect"``      mirrored with the edge (``cba|abcd|dcb``) scipy ``reflect``
``"mirror"``       mirrored without the edge (``dcb|abcd``)  OpenCV ``BORDER_REFLECT_101``
=================  ========================================  ===========================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: the families of Hendrycks & Dietterich, plus SegAudit's own occlusion
FAMILIES: tuple[str, ...] = ("noise", "blur", "weather", "digital", "occlusion")

Params = tuple[float, ...]
#: ``function(images, params, generators) -> images``; ``generators[i]`` drives image ``i``
CorruptionFunction = Callable[[torch.Tensor, Params, Sequence[torch.Generator]], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One corruption: its name, family, parameter table and function.

    ``table`` holds six rows of ``parameters``: row 0 the identity parameters, rows 1-5
    the severities (the reference's own values where ``reference`` is true).
    ``differentiable`` says whether gradients with respect to the images flow through
    ``function`` (everything but a few quantising steps).
    """

    name: str
    family: str
    differentiable: bool
    reference: bool
    function: CorruptionFunction
    parameters: tuple[str, ...]
    table: tuple[Params, ...]

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"corruption {self.name!r}: family {self.family!r} not in {FAMILIES}")
        if len(self.table) != 6 or any(len(row) != len(self.parameters) for row in self.table):
            raise ValueError(
                f"corruption {self.name!r}: table needs 6 rows (identity, severities 1-5) of "
                f"{len(self.parameters)} values ({', '.join(self.parameters)})"
            )

    def params(self, severity: float) -> Params:
        """The parameters at ``severity`` in [0, 5], interpolated between table rows."""
        return interpolate(self.table, severity)


def interpolate(table: Sequence[Params], severity: float) -> Params:
    """Row ``severity`` of ``table``, linear between the two rows around it."""
    low = min(math.floor(severity), len(table) - 2)
    t = severity - low
    return tuple((1 - t) * a + t * b for a, b in zip(table[low], table[low + 1], strict=True))


def generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One generator per image on ``device``, each seeded by that image's seed alone, so an
    image's corruption depends neither on its batch nor on its position in it."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def per_image(
    gens: Sequence[torch.Generator], draw: Callable[[torch.Generator], torch.Tensor]
) -> torch.Tensor:
    """``draw`` once per image from its own generator, stacked along a new first axis."""
    return torch.stack([draw(g) for g in gens])


def uniform(
    gens: Sequence[torch.Generator], shape: Sequence[int], like: torch.Tensor
) -> torch.Tensor:
    """``B x shape`` uniform [0, 1) draws, image ``i`` from ``gens[i]``."""
    return per_image(
        gens, lambda g: torch.rand(tuple(shape), generator=g, device=like.device, dtype=like.dtype)
    )


def normal(
    gens: Sequence[torch.Generator], shape: Sequence[int], like: torch.Tensor
) -> torch.Tensor:
    """``B x shape`` standard normal draws, image ``i`` from ``gens[i]``."""
    return per_image(
        gens, lambda g: torch.randn(tuple(shape), generator=g, device=like.device, dtype=like.dtype)
    )


# ---------------------------------------------------------------------------- border and filters


def border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source indices of a length-``n`` axis padded by ``before`` and ``after`` samples."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect":  # period 2n: 0..n-1 then n-1..0
        i = i % (2 * n)
        return torch.where(i < n, i, 2 * n - 1 - i)
    if mode == "mirror":  # period 2n-2: 0..n-1 then n-2..1
        if n == 1:
            return torch.zeros_like(i)
        i = i % (2 * n - 2)
        return torch.where(i < n, i, 2 * n - 2 - i)
    raise ValueError(f"unknown border mode {mode!r}")


def pad(x: torch.Tensor, ph: tuple[int, int], pw: tuple[int, int], mode: str) -> torch.Tensor:
    """``x`` (``... x H x W``) padded by (top, bottom) and (left, right) samples."""
    h, w = x.shape[-2:]
    rows = border_index(h, ph[0], ph[1], mode, x.device)
    cols = border_index(w, pw[0], pw[1], mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def correlate_separable(
    x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor, mode: str
) -> torch.Tensor:
    """``x`` (``B x C x H x W``) correlated with the odd 1-D kernels ``kh`` (rows), ``kw``."""
    b, c, h, w = x.shape
    rh, rw = kh.numel() // 2, kw.numel() // 2
    y = pad(x, (rh, rh), (rw, rw), mode).reshape(b * c, 1, h + 2 * rh, w + 2 * rw)
    y = F.conv2d(y, kh.to(x.dtype).reshape(1, 1, -1, 1))
    y = F.conv2d(y, kw.to(x.dtype).reshape(1, 1, 1, -1))
    return y.reshape(b, c, h, w)


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """``x`` correlated with one odd 2-D ``kernel`` on every channel (OpenCV's ``filter2D``)."""
    b, c, h, w = x.shape
    rh, rw = kernel.shape[0] // 2, kernel.shape[1] // 2
    y = pad(x, (rh, rh), (rw, rw), mode).reshape(b * c, 1, h + 2 * rh, w + 2 * rw)
    return F.conv2d(y, kernel.to(x.dtype)[None, None]).reshape(b, c, h, w)


def gaussian_kernel(sigma: float, truncate: float = 4.0, *, device: torch.device) -> torch.Tensor:
    """scipy's ``gaussian_filter1d`` weights: radius ``int(truncate * sigma + 0.5)``."""
    if sigma <= 0:
        return torch.ones(1, dtype=torch.float64, device=device)
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(
    x: torch.Tensor,
    sigma: float | tuple[float, float],
    *,
    truncate: float = 4.0,
    mode: str = "nearest",
) -> torch.Tensor:
    """scikit-image's ``gaussian`` (scipy ``gaussian_filter`` per channel); ``sigma`` is one
    value or (rows, columns)."""
    sh, sw = (sigma, sigma) if isinstance(sigma, int | float) else sigma
    kh = gaussian_kernel(sh, truncate, device=x.device)
    kw = gaussian_kernel(sw, truncate, device=x.device)
    return correlate_separable(x, kh, kw, mode)


def luma(x: torch.Tensor) -> torch.Tensor:
    """``B x 1 x H x W`` grey level of RGB ``x`` (ITU-R BT.601, OpenCV's ``RGB2GRAY``)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# ------------------------------------------------------------------------- motion blur, zoom


def shift_taps(angle: torch.Tensor, taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (row, column) offsets of the reference's motion-blur taps ``0..taps-1`` along
    ``angle`` (degrees, one per image): ``B x taps`` each."""
    i = torch.arange(taps, device=angle.device, dtype=torch.float64)[None]
    rad = torch.deg2rad(angle.to(torch.float64))[:, None]
    dy = -torch.ceil(i * torch.sin(rad) - 0.5)
    dx = -torch.ceil(i * torch.cos(rad) - 0.5)
    return dy.long(), dx.long()


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """The reference's ``_motion_blur``: a one-sided Gaussian-weighted sum of copies of ``x``
    shifted along ``angle`` (degrees, one per image), edges replicated.

    The reference uses ``2 * radius + 1`` taps; a fractional radius (between severities)
    uses ``floor(2 * radius) + 1``.  Taps that would shift by a whole image side or more
    are dropped, as the reference stops there.
    """
    b, c, h, w = x.shape
    taps = math.floor(2 * radius + 1e-9) + 1
    i = torch.arange(taps, dtype=torch.float64, device=x.device)
    weights = torch.exp(-(i**2) / (2 * sigma**2))  # constant factor cancels in the division
    weights = (weights / weights.sum()).to(x.dtype)
    dy, dx = shift_taps(angle, taps)
    inside = ((dy.abs() < h) & (dx.abs() < w)).long()
    # the reference breaks at the first tap out of bounds; later taps are farther still
    keep = inside.cumprod(dim=1).bool()
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    out = torch.zeros_like(x)
    for t in range(taps):
        ri = (rows[None] - dy[:, t : t + 1]).clamp(0, h - 1)  # B x H
        ci = (cols[None] - dx[:, t : t + 1]).clamp(0, w - 1)  # B x W
        moved = x.gather(2, ri[:, None, :, None].expand(b, c, h, w))
        moved = moved.gather(3, ci[:, None, None, :].expand(b, c, h, w))
        out = out + weights[t] * keep[:, t].to(x.dtype)[:, None, None, None] * moved
    return out


def _zoom_axis(
    n: int, factor: float, device: torch.device, crop_to_size: bool
) -> tuple[torch.Tensor, ...]:
    """Indices and weights of scipy's order-1 ``zoom`` of the centre ``ceil(n / factor)``
    samples of an axis, cropped back to ``n`` if ``crop_to_size``."""
    crop = math.ceil(n / factor)
    top = (n - crop) // 2
    out = round(crop * factor)
    scale = (crop - 1) / (out - 1) if out > 1 else 0.0
    pos = (
        torch.arange(min(n, out) if crop_to_size else out, dtype=torch.float64, device=device)
        * scale
    )
    low = pos.floor().clamp(0, crop - 1)
    frac = pos - low
    high = (low + 1).clamp(max=crop - 1)
    return (low.long() + top, high.long() + top, frac)


def clipped_zoom(x: torch.Tensor, factor: float, *, crop_to_size: bool = True) -> torch.Tensor:
    """Zoom into the centre of ``x`` by ``factor`` >= 1, bilinear (the reference's
    ``clipped_zoom``): the centre ``ceil(side / factor)`` samples scaled to
    ``round(that * factor)``, then cropped to the size of ``x`` if ``crop_to_size``
    (snow crops only after its motion blur, which therefore sees the extra rows).

    Where scipy's rounding leaves the zoomed image smaller than ``x`` the rest is zero, as
    the reference's fallback adds nothing there.
    """
    h, w = x.shape[-2:]
    r0, r1, fr = _zoom_axis(h, factor, x.device, crop_to_size)
    c0, c1, fc = _zoom_axis(w, factor, x.device, crop_to_size)
    fr = fr.to(x.dtype)[:, None]
    fc = fc.to(x.dtype)
    rows = x.index_select(-2, r0) * (1 - fr) + x.index_select(-2, r1) * fr
    out = rows.index_select(-1, c0) * (1 - fc) + rows.index_select(-1, c1) * fc
    if crop_to_size and out.shape[-2:] != (h, w):
        out = F.pad(out, (0, w - out.shape[-1], 0, h - out.shape[-2]))
    return out

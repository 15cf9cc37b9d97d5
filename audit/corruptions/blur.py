"""Blur: defocus, glass, motion, zoom and Gaussian.

All are linear in the image (glass blur up to a quantisation whose gradient passes straight
through), hence differentiable.  Random parts (glass blur's shuffle, motion blur's angle)
come from the image's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from audit.corruptions.base import (
    Corruption,
    Params,
    clipped_zoom,
    correlate2d,
    correlate_separable,
    per_image,
    uniform,
)
from audit.corruptions.base import (
    gaussian_blur as _gaussian,
)
from audit.corruptions.base import (
    motion_blur as _motion,
)


def disk_kernel(radius: float, alias_blur: float, device: torch.device) -> torch.Tensor:
    """The reference's anti-aliased disk: a normalised disk of ``radius`` on a grid of at
    least 17 x 17, smoothed by a 3 x 3 (5 x 5 above radius 8) Gaussian of ``alias_blur``
    with OpenCV's mirrored border."""
    half = 8 if radius <= 8 else math.ceil(radius)
    grid = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    if alias_blur <= 0:
        return disk
    size = 3 if radius <= 8 else 5
    t = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-(t**2) / (2 * alias_blur**2))
    k = k / k.sum()
    return correlate_separable(disk[None, None], k, k, "mirror")[0, 0]


def defocus_blur(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Convolution with an anti-aliased disk (a camera out of focus)."""
    radius, alias_blur = params
    return correlate2d(x, disk_kernel(radius, alias_blur, x.device), "mirror")


def _floor_255(x: torch.Tensor) -> torch.Tensor:
    """``floor(255 x) / 255`` (the reference stores the first blur as uint8), gradient 1."""
    return x + (torch.floor(x.detach() * 255) / 255 - x.detach())


def _resolve_chains(nxt: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Follow ``nxt`` from every node while ``cont`` holds; the node where each chain
    stops.  Pointer doubling: a chain of length L is resolved in about log2(L) steps."""
    res, ptr, done = nxt.clone(), nxt.clone(), ~cont
    while not bool(done.all()):
        target_done = done.gather(1, ptr)
        res = torch.where(~done & target_done, res.gather(1, ptr), res)
        ptr = torch.where(~done & ~target_done, ptr.gather(1, ptr), ptr)
        done = done | target_done
    return res


def glass_blur(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Blur, displace pixels locally ``iterations`` times, blur again (frosted glass).

    The reference visits the interior pixels one at a time in reverse raster order and
    "swaps" each with the pixel at a random offset in ``[-max_delta, max_delta - 1]`` per
    axis.  Its tuple assignment of NumPy views makes the swap a copy (the visited pixel
    takes its neighbour's value, the neighbour keeps its own), so a pass is a gather in
    which a source pixel that was visited earlier in the pass already holds a copied value:
    sources chain.  Here each pass draws all offsets at once and resolves the chains by
    pointer doubling, which gives the reference's result for the same offsets, vectorised
    (the reference takes minutes per megapixel).  The offsets come from torch's generator,
    so outputs are compared with the reference in statistics, not pixel by pixel.
    ``max_delta`` and ``iterations`` are rounded to integers between severities.
    """
    sigma, max_delta, iterations = params
    delta, passes = round(max_delta), round(iterations)
    b, c, h, w = x.shape
    y = _floor_255(_gaussian(x, sigma))
    rows = torch.arange(h, device=x.device)[:, None].expand(h, w)
    cols = torch.arange(w, device=x.device)[None, :].expand(h, w)
    interior = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    if delta == 0 or not bool(interior.any()):
        return _gaussian(y, sigma)
    here = torch.arange(h * w, device=x.device).expand(b, h * w)
    for _ in range(passes):
        offsets = per_image(
            gens,
            lambda g: torch.randint(-delta, delta, (2, h, w), generator=g, device=x.device),
        )
        src_r = (rows + offsets[:, 0]).clamp(0, h - 1)
        src_c = (cols + offsets[:, 1]).clamp(0, w - 1)
        nxt = torch.where(interior, src_r * w + src_c, here.reshape(b, h, w)).reshape(b, -1)
        # the source was visited earlier (reverse raster order: a larger index) and so
        # holds the value copied into it then
        flat_interior = interior.reshape(1, -1).expand(b, -1)
        cont = flat_interior & flat_interior.gather(1, nxt) & (nxt > here)
        src = _resolve_chains(nxt, cont)
        flat = y.reshape(b, c, h * w)
        y = flat.gather(2, src[:, None, :].expand(b, c, -1)).reshape(b, c, h, w)
    return _gaussian(y, sigma)


def motion_blur(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian-weighted trail of shifted copies at a random angle in [-45, 45) degrees."""
    radius, sigma = params
    angle = uniform(gens, (), x).to(torch.float64) * 90 - 45
    return _motion(x, radius, sigma, angle)


def zoom_blur(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Mean of the image and its centre zooms ``1, 1 + step, ...`` up to ``last``."""
    last, step = params
    count = math.floor((last - 1) / step + 1e-6) + 1
    out = x.clone()
    for k in range(count):
        out = out + clipped_zoom(x, 1 + step * k)
    return out / (count + 1)


def gaussian_blur(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels, edges replicated."""
    (sigma,) = params
    return _gaussian(x, sigma)


BLUR: tuple[Corruption, ...] = (
    Corruption(
        "defocus_blur",
        "blur",
        True,
        True,
        defocus_blur,
        ("radius", "alias_blur"),
        ((0.0, 0.0), (3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)),
    ),
    Corruption(
        "glass_blur",
        "blur",
        True,
        True,
        glass_blur,
        ("sigma", "max_delta", "iterations"),
        (
            (0.0, 0.0, 0.0),
            (0.7, 1.0, 2.0),
            (0.9, 2.0, 1.0),
            (1.0, 2.0, 3.0),
            (1.1, 3.0, 2.0),
            (1.5, 4.0, 2.0),
        ),
    ),
    Corruption(
        "motion_blur",
        "blur",
        True,
        True,
        motion_blur,
        ("radius", "sigma"),
        ((0.0, 3.0), (10.0, 3.0), (15.0, 5.0), (15.0, 8.0), (15.0, 12.0), (20.0, 15.0)),
    ),
    Corruption(
        "zoom_blur",
        "blur",
        True,
        True,
        zoom_blur,
        ("last", "step"),
        ((1.0, 0.01), (1.11, 0.01), (1.15, 0.01), (1.20, 0.02), (1.24, 0.02), (1.30, 0.03)),
    ),
    Corruption(
        "gaussian_blur",
        "blur",
        True,
        True,
        gaussian_blur,
        ("sigma",),
        ((0.0,), (1.0,), (2.0,), (3.0,), (4.0,), (6.0,)),
    ),
)

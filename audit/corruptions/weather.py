"""Weather: snow and fog (frost is left out: see docs/corruptions.md).

Both add a random layer that does not depend on the image, drawn from the image's own
generator, so the gradient with respect to the image is that of the blend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audit.corruptions.base import (
    Corruption,
    Params,
    clipped_zoom,
    luma,
    motion_blur,
    normal,
    per_image,
    uniform,
)


def plasma_fractal(
    gens: Sequence[torch.Generator], size: int, decay: float, device: torch.device
) -> torch.Tensor:
    """``B x size x size`` diamond-square height maps in [0, 1] (the reference's
    ``plasma_fractal``; ``size`` a power of two): each level fills square centres, then
    diamond centres, with the mean of their four neighbours (wrapping around) plus uniform
    noise of amplitude ``wibble**2``; ``wibble`` starts at 100 and is divided by ``decay``
    per level.  Vectorised within a level, levels in sequence."""
    b = len(gens)
    grid = torch.zeros(b, size, size, dtype=torch.float64, device=device)
    step, wibble = size, 100.0

    def wibbled(total: torch.Tensor) -> torch.Tensor:
        draw = per_image(
            gens,
            lambda g: torch.rand(total.shape[1:], generator=g, device=device, dtype=torch.float64),
        )
        return total / 4 + wibble * (2 * draw - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        grid[:, half::step, half::step] = wibbled(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        grid[:, 0::step, half::step] = wibbled(left)
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        grid[:, half::step, 0::step] = wibbled(top)
        step //= 2
        wibble /= decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def _next_power_of_2(n: int) -> int:
    return 1 if n == 0 else 2 ** (n - 1).bit_length()


def fog(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Add ``strength`` times a plasma fractal to every channel, then rescale so that the
    image's maximum stays where it was: ``(x + s * plasma) * max / (max + s)``."""
    strength, decay = params
    if strength <= 0:
        return x
    _b, _, h, w = x.shape
    # the reference sizes the map from the array's shape, channels included
    size = _next_power_of_2(max(h, w, 3))
    plasma = plasma_fractal(gens, size, decay, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * plasma) * peak / (peak + strength)


def snow(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Falling snow: a Gaussian random layer (mean ``loc``, deviation ``scale``) zoomed in
    by ``zoom``, cut below ``threshold``, streaked by a motion blur (``radius``, ``sigma``)
    at a random angle in [-135, -45) degrees and rounded to 8 bits; the image is whitened
    towards ``max(x, 1.5 * grey + 0.5)`` by ``1 - mix`` and the layer is added twice, once
    upside down."""
    loc, scale, zoom, threshold, radius, sigma, mix = params
    _b, _, h, w = x.shape
    layer = loc + scale * normal(gens, (1, h, w), x)
    layer = clipped_zoom(layer, max(zoom, 1.0), crop_to_size=False)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    angle = uniform(gens, (), x).to(torch.float64) * 90 - 135
    layer = motion_blur(layer, radius, sigma, angle)
    layer = torch.round(layer[:, :, :h, :w] * 255) / 255
    whitened = torch.maximum(x, luma(x) * 1.5 + 0.5)
    x = mix * x + (1 - mix) * whitened
    return x + layer + layer.flip(-1, -2)


WEATHER: tuple[Corruption, ...] = (
    Corruption(
        "snow",
        "weather",
        True,
        True,
        snow,
        ("loc", "scale", "zoom", "threshold", "radius", "sigma", "mix"),
        (
            (0.0, 0.0, 1.0, 1.0, 0.0, 4.0, 1.0),
            (0.1, 0.3, 3.0, 0.5, 10.0, 4.0, 0.8),
            (0.2, 0.3, 2.0, 0.5, 12.0, 4.0, 0.7),
            (0.55, 0.3, 4.0, 0.9, 12.0, 8.0, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12.0, 8.0, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12.0, 12.0, 0.55),
        ),
    ),
    Corruption(
        "fog",
        "weather",
        True,
        True,
        fog,
        ("strength", "decay"),
        ((0.0, 2.0), (1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    ),
)

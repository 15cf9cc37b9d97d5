"""Noise: Gaussian, shot (Poisson), impulse (salt and pepper) and speckle.

Every draw comes from the image's own generator; the noise does not depend on the image
values except through the formula, so the gradient with respect to the image is the
formula's (shot noise, a Poisson count, has no such path: it passes the gradient straight
through, as if the sampled noise were fixed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audit.corruptions.base import Corruption, Params, normal, uniform


def gaussian_noise(
    x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """``x + N(0, std^2)`` per channel and pixel."""
    (std,) = params
    return x + std * normal(gens, x.shape[1:], x)


def shot_noise(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """``Poisson(x * photons) / photons``; the parameter is ``1 / photons`` (0: no noise),
    so that it is linear in the noise variance and interpolates from the identity."""
    (inverse,) = params
    if inverse <= 0:
        return x
    photons = 1.0 / inverse
    rate = (x.detach() * photons).clamp_min(0)
    counts = torch.stack([torch.poisson(rate[i], generator=g) for i, g in enumerate(gens)])
    # straight-through: the sampled noise is held fixed, so d(out)/dx = 1
    return x + (counts / photons - x.detach())


def impulse_noise(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Each channel value, with probability ``amount``, becomes 0 or 1 (even odds)."""
    (amount,) = params
    draws = uniform(gens, (2, *x.shape[1:]), x)
    flipped = draws[:, 0] < amount
    salt = (draws[:, 1] < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x)


def speckle_noise(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """``x + x * N(0, std^2)``: noise proportional to brightness."""
    (std,) = params
    return x + x * std * normal(gens, x.shape[1:], x)


NOISE: tuple[Corruption, ...] = (
    Corruption(
        "gaussian_noise",
        "noise",
        True,
        True,
        gaussian_noise,
        ("std",),
        ((0.0,), (0.08,), (0.12,), (0.18,), (0.26,), (0.38,)),
    ),
    Corruption(
        "shot_noise",
        "noise",
        True,
        True,
        shot_noise,
        ("1/photons",),
        ((0.0,), (1 / 60,), (1 / 25,), (1 / 12,), (1 / 5,), (1 / 3,)),
    ),
    Corruption(
        "impulse_noise",
        "noise",
        True,
        True,
        impulse_noise,
        ("amount",),
        ((0.0,), (0.03,), (0.06,), (0.09,), (0.17,), (0.27,)),
    ),
    Corruption(
        "speckle_noise",
        "noise",
        True,
        True,
        speckle_noise,
        ("std",),
        ((0.0,), (0.15,), (0.2,), (0.35,), (0.45,), (0.6,)),
    ),
)

"""Empirical robustness radii from a minimal-norm attack's result.

A minimal-norm attack returns one adversarial image per input; its perturbation norm is the
image's empirical radius (:func:`image_radius`).  :func:`pixel_radii` walks the straight path
from the clean image to the adversarial one and records, per pixel, the size of the smallest
perturbation on that path at which the pixel's prediction changes.

Every point of the path is a perturbation the model was actually evaluated on, so each
per-pixel value is *achieved*: it is an upper bound of the pixel's true minimal adversarial
radius (in the norm of the whole image's perturbation).  That is the side a comparison with
certified radii needs: a certificate (a lower bound) above an empirical radius is a
contradiction, i.e. a broken certificate or a broken model wrapper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from audit.metrics import predict
from audit.threat import NORMS

Model = Callable[[torch.Tensor], torch.Tensor]


def image_radius(images: torch.Tensor, adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of ``adv - images`` in ``norm`` (``"linf"`` or ``"l2"``): N values."""
    if norm not in NORMS:
        raise ValueError(f"expected norm {' or '.join(NORMS)}, got {norm!r}")
    delta = (adv - images).flatten(1)
    if norm == "linf":
        return delta.abs().amax(dim=1)
    return delta.norm(p=2, dim=1)


def pixel_radii(
    model: Model,
    images: torch.Tensor,
    adv: torch.Tensor,
    *,
    norm: str,
    steps: int = 32,
    reference: torch.Tensor | None = None,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Per-pixel empirical radius along the straight path from ``images`` to ``adv``.

    For t = 1/steps, 2/steps, ..., 1 the model sees ``images + t * (adv - images)``; each
    pixel's radius is ``t * image_radius(images, adv, norm)`` for the smallest t at which its
    argmax differs from ``reference`` (default: the clean argmax), and ``inf`` where it never
    does.  With an explicit ``reference`` (the labels, say), a pixel whose clean prediction
    already differs from it has radius 0, and a pixel whose reference is ``ignore_index``
    has radius NaN.

    Each value is an upper bound of the pixel's true minimal radius (module docstring); on a
    path where the pixel's prediction changes once, it overshoots the crossing point of the
    path by at most ``image_radius / steps``.  The grid is evaluated one t at a time, so at
    most one batch of images is in memory beside the inputs.

    Returns an N x H x W float tensor on the images' device.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if images.shape != adv.shape:
        raise ValueError(
            f"images and adv must have the same shape, got {tuple(images.shape)} "
            f"and {tuple(adv.shape)}"
        )
    images, adv = images.detach(), adv.detach()
    total = image_radius(images, adv, norm).float()
    delta = adv - images
    with torch.no_grad():
        clean = predict(model(images))
        if reference is None:
            reference = clean
        reference = reference.to(clean.device)
        radii = torch.full(clean.shape, float("inf"), device=clean.device)
        radii.masked_fill_(clean != reference, 0.0)
        for k in range(1, steps + 1):
            t = k / steps
            # the last point is adv itself: images + 1.0 * delta may round differently
            pred = predict(model(adv if k == steps else images + t * delta))
            first = (pred != reference) & torch.isinf(radii)
            radii = torch.where(first, (t * total).view(-1, 1, 1).to(radii.device), radii)
    if ignore_index is not None:
        radii.masked_fill_(reference == ignore_index, float("nan"))
    return radii

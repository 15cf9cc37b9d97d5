"""Occlusion: SegAudit's own corruption, not in imagecorruptions.

Up to five flat-coloured squares hide parts of the image, as dirt on a lens or an object
close to the camera would.  Every image draws all five squares' centres and colours from
its own generator whatever the severity, and severity only grows them: square ``j`` has
side ``side * min(H, W) * clamp(count - j, 0, 1)``.  So for a fixed seed a higher severity
covers a superset of what a lower one covers, and the scale is continuous (a square appears
by growing from a point).  The hidden pixels take the square's colour; the others are
untouched, so the gradient is 1 outside the squares and 0 inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audit.corruptions.base import Corruption, Params, uniform

MAX_PATCHES = 5


def occlusion(x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Paint up to :data:`MAX_PATCHES` squares (see the module docstring)."""
    side, count = params
    _b, _, h, w = x.shape
    draws = uniform(gens, (MAX_PATCHES, 5), x).to(torch.float64)  # cy, cx, r, g, b
    rows = torch.arange(h, device=x.device, dtype=torch.float64)[None, :, None] + 0.5
    cols = torch.arange(w, device=x.device, dtype=torch.float64)[None, None, :] + 0.5
    out = x
    for j in range(MAX_PATCHES):
        half = 0.5 * side * min(h, w) * min(max(count - j, 0.0), 1.0)
        if half <= 0:
            continue
        cy = draws[:, j, 0, None, None] * h
        cx = draws[:, j, 1, None, None] * w
        inside = ((rows - cy).abs() < half) & ((cols - cx).abs() < half)  # B x H x W
        colour = draws[:, j, 2:].to(x.dtype)[:, :, None, None]
        out = torch.where(inside[:, None], colour, out)
    return out


OCCLUSION: tuple[Corruption, ...] = (
    Corruption(
        "occlusion",
        "occlusion",
        True,
        False,
        occlusion,
        ("side", "count"),
        ((0.0, 0.0), (0.1, 1.0), (0.15, 2.0), (0.2, 3.0), (0.25, 4.0), (0.3, 5.0)),
    ),
)

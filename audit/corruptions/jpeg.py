"""JPEG compression as Pillow and libjpeg do it, in torch.

Baseline JPEG with Pillow's defaults: JFIF YCbCr, 4:2:0 chroma subsampling (2 x 2 box
average), the standard quantisation tables of ITU-T T.81 Annex K scaled by the quality as
libjpeg scales them, 8 x 8 DCT, and "fancy" (triangular) chroma upsampling on decoding.
libjpeg computes in fixed point (its integer DCTs, its colour tables); this computes the
same steps in floating point and rounds where libjpeg stores integers, so a coefficient that
lies on a rounding boundary can fall the other way: a few pixels differ by more than a grey
level (see the tolerance in docs/corruptions.md).  Rounding makes it piecewise constant:
it is not differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from audit.corruptions.base import Corruption, Params

_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)


def quantisation_table(base: Sequence[Sequence[int]], quality: int) -> torch.Tensor:
    """libjpeg's ``jpeg_quality_scaling`` applied to ``base`` (baseline: entries 1..255)."""
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.float64)
    return ((table * scale + 50) // 100).clamp(1, 255)


def _dct_matrix(device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II, which is JPEG's DCT."""
    k = torch.arange(8, dtype=torch.float64, device=device)
    m = torch.cos((2 * k[None] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level-shift, DCT, quantise, dequantise and inverse-DCT a ``B x H x W`` plane whose
    sides are multiples of 8; returns the decoded samples, rounded and clipped to 0..255."""
    b, h, w = plane.shape
    d = _dct_matrix(plane.device)
    blocks = (plane - 128).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    q = table.to(plane.device)
    # libjpeg rounds the quotient half away from zero
    coef = torch.sign(coef) * torch.floor(coef.abs() / q + 0.5) * q
    out = d.T @ coef @ d
    out = out.permute(0, 1, 3, 2, 4).reshape(b, h, w)
    return (torch.round(out) + 128).clamp(0, 255)


def _fancy_upsample(plane: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """libjpeg's h2v2 "fancy" upsampling: weights 3/4 and 1/4 towards the nearer and the
    farther chroma sample on each axis, edges replicated (bilinear at half-pixel centres)."""
    up = F.interpolate(plane[:, None], scale_factor=2, mode="bilinear", align_corners=False)
    return up[:, 0, :h, :w]


def jpeg_compression(
    x: torch.Tensor, params: Params, gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """Encode and decode at ``quality`` (rounded to an integer between severities)."""
    (quality,) = params
    if quality >= 101:  # the identity row: no compression at all
        return x
    q = round(quality)
    b, _, h, w = x.shape
    # the encoder sees 8-bit samples; whole 16 x 16 MCUs, the last row and column repeated
    rgb = torch.round(x.detach().to(torch.float64).clamp(0, 1) * 255)
    ph, pw = -h % 16, -w % 16
    rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    r, g, bl = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = torch.round(0.299 * r + 0.587 * g + 0.114 * bl)
    cb = torch.round(-0.168735892 * r - 0.331264108 * g + 0.5 * bl + 128)
    cr = torch.round(0.5 * r - 0.418687589 * g - 0.081312411 * bl + 128)

    def subsample(c: torch.Tensor) -> torch.Tensor:
        # libjpeg's h2v2_downsample: (sum of 4 + bias) >> 2, bias 1, 2, 1, 2, ... by column
        s = c.reshape(b, c.shape[1] // 2, 2, c.shape[2] // 2, 2).sum(dim=(2, 4))
        bias = 1 + (torch.arange(s.shape[-1], device=c.device) % 2)
        return torch.floor((s + bias) / 4)

    cb_s, cr_s = subsample(cb), subsample(cr)
    # chroma planes are padded to whole 8 x 8 blocks by repetition before coding
    cb_s = F.pad(cb_s[:, None], (0, -cb_s.shape[-1] % 8, 0, -cb_s.shape[-2] % 8), "replicate")[:, 0]
    cr_s = F.pad(cr_s[:, None], (0, -cr_s.shape[-1] % 8, 0, -cr_s.shape[-2] % 8), "replicate")[:, 0]
    luma_table = quantisation_table(_LUMA, q)
    chroma_table = quantisation_table(_CHROMA, q)
    y = _code_plane(y, luma_table)[:, :h, :w]
    ch, cw = (h + 1) // 2, (w + 1) // 2  # the chroma plane's own size, before padding
    cb = _fancy_upsample(_code_plane(cb_s, chroma_table)[:, :ch, :cw], h, w) - 128
    cr = _fancy_upsample(_code_plane(cr_s, chroma_table)[:, :ch, :cw], h, w) - 128
    cb, cr = torch.round(cb), torch.round(cr)
    out = torch.stack(
        (
            y + torch.round(1.402 * cr),
            y + torch.round(-0.344136286 * cb - 0.714136286 * cr),
            y + torch.round(1.772 * cb),
        ),
        dim=1,
    )
    return (out.clamp(0, 255) / 255).to(x.dtype)


JPEG: tuple[Corruption, ...] = (
    Corruption(
        "jpeg_compression",
        "digital",
        False,
        True,
        jpeg_compression,
        ("quality",),
        # 101 marks the identity: quality 100 still subsamples chroma and rounds
        ((101.0,), (25.0,), (18.0,), (15.0,), (10.0,), (7.0,)),
    ),
)

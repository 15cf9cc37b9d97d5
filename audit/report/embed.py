"""Images inlined into the report as base64 data URIs, so the page needs no other file."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from markupsafe import Markup

#: Files larger than this are not inlined; a report must stay a reasonable e-mail attachment.
MAX_EMBED_BYTES = 16 * 1024 * 1024

_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _image_mime(head: bytes) -> str | None:
    for signature, mime in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _placeholder(text: str) -> Markup:
    return Markup('<div class="missing-image" role="img" aria-label="{0}">{0}</div>').format(text)


def embed_image(report_dir: Path, relative: Any, alt: str = "") -> Markup:
    """``<img>`` with the file inlined as a data URI, or a placeholder naming what is wrong.

    Only files inside ``report_dir`` are read: a results file must not be able to pull
    arbitrary files from the machine into a page that gets shared.
    """
    if not isinstance(relative, str) or not relative:
        return _placeholder("No image recorded")
    root = report_dir.resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, ValueError):  # NUL bytes, symlink loops
        return _placeholder(f"Invalid image path: {relative!r}")
    if not path.is_relative_to(root):
        return _placeholder(f"Image outside the report folder, not embedded: {relative}")
    try:
        size = path.stat().st_size
        if size > MAX_EMBED_BYTES:
            return _placeholder(f"Image too large to embed ({size:,} bytes): {relative}")
        data = path.read_bytes()
    except FileNotFoundError:
        return _placeholder(f"Missing image: {relative}")
    except OSError as exc:
        return _placeholder(f"Unreadable image: {relative} ({exc.strerror or exc})")
    mime = _image_mime(data[:16])
    if mime is None:
        return _placeholder(f"Not a PNG, JPEG, GIF or WebP image: {relative}")
    encoded = base64.b64encode(data).decode("ascii")
    return Markup('<img src="data:{};base64,{}" alt="{}">').format(mime, encoded, alt)

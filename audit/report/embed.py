"""Images in the report: each distinct file embedded once, as a small thumbnail, linked to the
full-resolution file beside the page.

A report shows the same input, ground truth and clean prediction next to every attack that
picked that image among its worst, so :class:`PageImages` keeps one thumbnail per distinct
content in a hidden SVG block at the end of the page, and every place that shows it draws
it with ``<use href="#thumb-N">``.  That needs no script and no network, and prints, unlike
CSS background images.

Thumbnails are made from the recorded files at render time, so any record (older ones too)
renders small.  The longest side is at most :data:`THUMBNAIL_SIDE` pixels.  Label maps (at
most 256 colours: masks, predictions, sign perturbations) are scaled nearest-neighbour and
stored as lossless WebP so class boundaries stay exact; everything else is scaled with a
Lanczos filter and stored as lossy WebP at :data:`PHOTO_QUALITY`.  Both encoders are
deterministic, so the same record renders the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markupsafe import Markup
from PIL import Image

#: Files larger than this are not read: a recorded image is a few MB at most, and a page
#: must not stall on whatever a results file points at.
MAX_EMBED_BYTES = 16 * 1024 * 1024
#: Longest side of an embedded thumbnail, in pixels: twice the width of an attack example's
#: cell (six to a row), enough for a high-density screen and for print.
THUMBNAIL_SIDE = 320
#: WebP quality of photographic thumbnails (inputs, adversarial inputs, radius maps); at 60
#: the artefacts are below what a 160-pixel cell shows, at half the bytes of 90.
PHOTO_QUALITY = 60
#: Images with at most this many colours are label maps: lossless and nearest-neighbour.
MAX_LABEL_COLOURS = 256

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


@dataclass(frozen=True)
class Thumbnail:
    """An encoded thumbnail: WebP bytes, its size, and whether it is a label map."""

    data: bytes
    width: int
    height: int
    crisp: bool

    @property
    def data_uri(self) -> str:
        return "data:image/webp;base64," + base64.b64encode(self.data).decode("ascii")


def make_thumbnail(data: bytes, *, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """Decode an image file's bytes and encode the thumbnail the report embeds.

    Raises :class:`OSError` or :class:`ValueError` (Pillow's errors) for bytes it cannot
    decode, and :class:`Image.DecompressionBombError` for absurd dimensions.
    """
    with warnings.catch_warnings():
        # A large image is an error below, not a warning on the audit's output.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)  # the first frame of an animation
            image = opened.convert("RGBA" if _has_alpha(opened) else "RGB")
    crisp = image.getcolors(MAX_LABEL_COLOURS) is not None
    width, height = image.size
    scale = min(1.0, side / max(width, height, 1))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resample = Image.Resampling.NEAREST if crisp else Image.Resampling.LANCZOS
        image = image.resize(size, resample)
    out = io.BytesIO()
    # The fastest settings (method 0; for lossless, quality is effort): a page embeds a few
    # hundred thumbnails, and the slower settings save 5-15 % of bytes at 2-4x the time.
    if crisp:
        image.save(out, format="WEBP", lossless=True, quality=0, method=0)
    else:
        image.save(out, format="WEBP", quality=PHOTO_QUALITY, method=0)
    return Thumbnail(out.getvalue(), image.width, image.height, crisp)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _placeholder(text: str) -> Markup:
    return Markup('<div class="missing-image" role="img" aria-label="{0}">{0}</div>').format(text)


def _resolve(report_dir: Path, relative: Any) -> tuple[Path, str] | Markup:
    """The file ``relative`` names inside ``report_dir`` and its link, or a placeholder.

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
    return path, quote(path.relative_to(root).as_posix())


def _read(path: Path, relative: str) -> bytes | Markup:
    try:
        size = path.stat().st_size
        if size > MAX_EMBED_BYTES:
            return _placeholder(f"Image too large to embed ({size:,} bytes): {relative}")
        data = path.read_bytes()
    except FileNotFoundError:
        return _placeholder(f"Missing image: {relative}")
    except OSError as exc:
        return _placeholder(f"Unreadable image: {relative} ({exc.strerror or exc})")
    if _image_mime(data[:16]) is None:
        return _placeholder(f"Not a PNG, JPEG, GIF or WebP image: {relative}")
    return data


def _thumbnail(data: bytes, relative: str, side: int = THUMBNAIL_SIDE) -> Thumbnail | Markup:
    try:
        return make_thumbnail(data, side=side)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return _placeholder(f"Unreadable image: {relative}")


def embed_image(report_dir: Path, relative: Any, alt: str = "") -> Markup:
    """One ``<img>`` with the file's thumbnail inlined as a data URI, or a placeholder naming
    what is wrong.  For a single image outside a page; pages use :class:`PageImages`."""
    resolved = _resolve(report_dir, relative)
    if isinstance(resolved, Markup):
        return resolved
    data = _read(resolved[0], relative)
    if isinstance(data, Markup):
        return data
    thumb = _thumbnail(data, relative)
    if isinstance(thumb, Markup):
        return thumb
    return Markup('<img src="{}" width="{}" height="{}" alt="{}">').format(
        thumb.data_uri, thumb.width, thumb.height, alt
    )


class PageImages:
    """The images of one page.  Calling it with a path draws that file's thumbnail, linked to
    the file; :meth:`definitions` holds every distinct thumbnail once, and goes after the
    last use (ids resolve document-wide)."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = Path(report_dir)
        self._by_path: dict[tuple[Path, int], tuple[str, Thumbnail] | Markup] = {}
        self._by_content: dict[tuple[str, int], tuple[str, Thumbnail]] = {}
        self._by_thumbnail: dict[str, tuple[str, Thumbnail]] = {}
        self._order: list[tuple[str, Thumbnail]] = []

    def __call__(self, relative: Any, alt: str = "", side: int = THUMBNAIL_SIDE) -> Markup:
        resolved = _resolve(self.report_dir, relative)
        if isinstance(resolved, Markup):
            return resolved
        path, href = resolved
        if (path, side) not in self._by_path:
            self._by_path[path, side] = self._load(path, relative, side)
        entry = self._by_path[path, side]
        if isinstance(entry, Markup):
            return entry
        ident, thumb = entry
        return Markup(
            '<a class="thumb-link" href="{href}" title="full resolution">'
            '<svg class="thumb" role="img" aria-label="{alt}" viewBox="0 0 {w} {h}" '
            'width="{w}" height="{h}"><title>{alt}</title><use href="#{ident}"/></svg></a>'
        ).format(href=href, alt=alt, w=thumb.width, h=thumb.height, ident=ident)

    def link(self, relative: Any, text: str) -> Markup:
        """A link to a recorded file beside the page, or ``text`` alone when the record names
        no file inside the report folder."""
        resolved = _resolve(self.report_dir, relative)
        if isinstance(resolved, Markup):
            return Markup("{}").format(text)
        return Markup('<a href="{}">{}</a>').format(resolved[1], text)

    def _load(self, path: Path, relative: str, side: int) -> tuple[str, Thumbnail] | Markup:
        data = _read(path, relative)
        if isinstance(data, Markup):
            return data
        key = (hashlib.sha256(data).hexdigest(), side)
        if key not in self._by_content:
            thumb = _thumbnail(data, relative, side)
            if isinstance(thumb, Markup):
                return thumb
            # Different files can hold the same pixels: a certification writes its own copy
            # of an input, with other PNG settings.
            drawn = hashlib.sha256(thumb.data).hexdigest()
            if drawn not in self._by_thumbnail:
                self._by_thumbnail[drawn] = (f"thumb-{len(self._order) + 1}", thumb)
                self._order.append(self._by_thumbnail[drawn])
            self._by_content[key] = self._by_thumbnail[drawn]
        return self._by_content[key]

    def definitions(self) -> Markup:
        """The hidden SVG block holding every thumbnail drawn so far, once each."""
        if not self._order:
            return Markup("")
        symbols = [
            Markup(
                '<symbol id="{}" viewBox="0 0 {w} {h}"><image width="{w}" height="{h}"{crisp} '
                'href="{uri}"/></symbol>'
            ).format(
                ident,
                w=thumb.width,
                h=thumb.height,
                crisp=Markup(' class="crisp"') if thumb.crisp else "",
                uri=thumb.data_uri,
            )
            for ident, thumb in self._order
        ]
        return Markup(
            '<svg class="image-defs" aria-hidden="true" width="0" height="0">\n{}\n</svg>'
        ).format(Markup("\n").join(symbols))

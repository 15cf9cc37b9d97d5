"""Reading images and masks from disk, resizing them, and hashing the files a dataset uses."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from audit.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
_CHUNK = 1 << 20
# Greyscale modes whose pixel values are the class indices themselves.
_INDEX_MODES = {"P", "L", "1", "I", "I;16", "I;16B", "I;16L"}


def _open(path: Path, what: str) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    # PIL's decoders raise a zoo of exception types (OSError, SyntaxError, ValueError,
    # struct.error, DecompressionBombError...) on corrupt or truncated files.
    except Exception as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    return im


def read_image(path: Path) -> torch.Tensor:
    """Load an image file as float32, 3 x H x W, in [0, 1]."""
    with _open(path, "image") as im:
        if im.mode.startswith("I;16"):
            grey = np.asarray(im, dtype=np.float32) / 65535.0
            arr = np.repeat(grey[..., None], 3, axis=2)
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float().div_(255.0)


def image_file_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return int(height), int(width)


def read_mask(path: Path) -> np.ndarray:
    """Load a single-channel mask as int64: palette indices for P-mode PNGs, else raw values."""
    with _open(path, "mask") as im:
        if im.mode not in _INDEX_MODES:
            raise DataError(
                f"mask {path} is a {im.mode} image; masks must be single-channel PNGs holding "
                "class indices (palette or greyscale), not colour-coded RGB"
            )
        # np.asarray of a P-mode image gives the palette indices, not the colours.
        return np.asarray(im).astype(np.int64)


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Refuse values that are neither a class index nor the ignore index."""
    bad = (mask < 0) | (mask >= num_classes)
    bad &= mask != ignore_index
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise DataError(
            f"mask {path} holds values {shown} outside the {num_classes} classes "
            f"[0, {num_classes}) and the ignore index {ignore_index}"
        )


def check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    """Validate an optional (H, W) resize target."""
    if size is None:
        return None
    if (
        isinstance(size, (str, bytes))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
        or min(size) < 1
    ):
        raise ConfigError(
            f"must be (height, width) with two positive integers, got {size!r}", key="size"
        )
    return int(size[0]), int(size[1])


def check_split(split: str) -> str:
    """A split names one folder or list file; refuse anything that could walk elsewhere."""
    if (
        not isinstance(split, str)
        or not split
        or split in {".", ".."}
        or any(sep in split for sep in ("/", "\\", os.sep))
    ):
        raise ConfigError(f"must be a plain name such as 'val', got {split!r}", key="split")
    return split


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing, so downscaling does not alias fine textures."""
    if tuple(image.shape[-2:]) == size:
        return image
    out = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]
    return out.clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest neighbour at pixel centres, so no label is invented between two classes."""
    if tuple(mask.shape[-2:]) == size:
        return mask
    # interpolate has no integer kernels; float32 is exact for label values below 2**24.
    out = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return out.to(torch.int64)


def hash_files(root: Path, files: Iterable[Path], options: dict[str, Any]) -> str:
    """SHA-256 over the options, the sorted paths relative to ``root`` and the files' bytes.

    Paths are hashed relative to ``root`` so moving a dataset keeps its fingerprint.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(options, sort_keys=True).encode())
    rel = sorted({p.relative_to(root).as_posix(): p for p in files}.items())
    for name, path in rel:
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        try:
            digest.update(path.stat().st_size.to_bytes(8, "little"))
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read {path} to fingerprint the dataset: {exc}") from exc
    return digest.hexdigest()


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"{what} {path} {state}")
    return path

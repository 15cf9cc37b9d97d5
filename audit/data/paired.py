"""Shared machinery of datasets stored as (image file, mask file) pairs under one root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.data.base import Sample, SegmentationDataset
from audit.data.io import (
    check_mask_values,
    hash_files,
    image_file_size,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
)
from audit.errors import DataError


class PairedFileDataset(SegmentationDataset):
    """Loads ``pairs[i]`` lazily; subclasses find the pairs and may remap mask values."""

    def __init__(
        self,
        root: Path,
        pairs: list[tuple[Path, Path]],
        *,
        size: tuple[int, int] | None,
        options: dict[str, Any],
    ) -> None:
        self.root = root
        self.size = size
        self._pairs = pairs
        # Everything besides the files that changes what the samples are.
        self._options = options
        self._fingerprint: str | None = None

    @property
    def files(self) -> list[tuple[Path, Path]]:
        """(image, mask) paths, in sample order."""
        return list(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Turn stored mask values into class indices; the default checks they already are."""
        check_mask_values(raw, self.num_classes, self.ignore_index, path)
        return raw

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"sample index must be an integer, got {type(index).__name__}")
        n = len(self._pairs)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples in {self.root}")
        image_path, mask_path = self._pairs[index]
        name = self._name(image_path)
        try:
            image = read_image(image_path)
            mask = self.decode_mask(read_mask(mask_path), mask_path)
            if tuple(image.shape[-2:]) != mask.shape:
                raise DataError(
                    f"image {image_path} is {image.shape[1]}x{image.shape[2]} but its mask "
                    f"{mask_path} is {mask.shape[0]}x{mask.shape[1]}"
                )
        except DataError as exc:
            raise DataError(f"sample {index} ({name}): {exc}") from exc
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        if self.size is not None:
            image, mask_t = resize_image(image, self.size), resize_mask(mask_t, self.size)
        return Sample(image=image, mask=mask_t, name=name)

    def image_size(self, index: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        return image_file_size(self._pairs[index][0])

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = [p for pair in self._pairs for p in pair]
            self._fingerprint = hash_files(self.root, files, self._hashed_options())
        return self._fingerprint

    def _hashed_options(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": list(self.size) if self.size else None,
            "class_names": list(self.class_names),
            "ignore_index": self.ignore_index,
            **self._options,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "root": str(self.root),
            **self._options,
            "size": list(self.size) if self.size else None,
            "num_samples": len(self),
        }

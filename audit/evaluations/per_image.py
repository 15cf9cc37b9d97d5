"""What every evaluation result with one row per image answers the same way."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PerImage:
    """Mixin of the result dataclasses: ``per_image`` holds one row per image (confusion
    matrices, flags) and ``resolutions`` each image's input size."""

    per_image: torch.Tensor
    resolutions: Sequence[tuple[int, int]]

    @property
    def num_samples(self) -> int:
        return int(self.per_image.shape[0])

    @property
    def resolution(self) -> tuple[int, int] | None:
        """The common input size, or ``None`` when images differ in size."""
        sizes = set(self.resolutions)
        return next(iter(sizes)) if len(sizes) == 1 else None

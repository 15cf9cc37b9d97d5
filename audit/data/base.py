"""What every dataset hands the engine: images in [0, 1], integer masks, a fingerprint."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    ``image`` is float32, 3 x H x W, in [0, 1]; ``mask`` is int64, H x W, holding
    class indices in ``[0, num_classes)`` or the dataset's ignore index.  ``name``
    identifies the sample in error messages and reports (a file path relative to
    the dataset root, or ``synthetic-000012``).
    """

    image: torch.Tensor
    mask: torch.Tensor
    name: str


class SegmentationDataset(ABC):
    """A finite, indexable, deterministic set of labelled images."""

    #: short kind name: ``synthetic``, ``cityscapes``, ``voc``, ``folder``
    kind: str
    class_names: tuple[str, ...]
    ignore_index: int
    #: one RGB triple per class, for drawing masks in reports
    palette: tuple[tuple[int, int, int], ...]
    #: conditions the images were taken in (ACDC: fog, night, rain, snow), for results per
    #: condition; empty for a layout that records none
    conditions: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample:
        """Load sample ``index``; raise :class:`~audit.errors.DataError` naming a bad file."""

    def image_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``index`` as :meth:`__getitem__` returns it.  The engine plans
        its batches from these before loading any sample; override it where the size is known
        without decoding the image (the default loads the sample)."""
        shape = self[index].image.shape
        return int(shape[-2]), int(shape[-1])

    def condition(self, index: int) -> str | None:
        """The condition (one of :attr:`conditions`) sample ``index`` was taken in; ``None``
        for a layout without conditions."""
        return None

    @abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 hex digest of all the samples depend on (files or generator parameters)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance: kind, root, split, size options, number of samples."""

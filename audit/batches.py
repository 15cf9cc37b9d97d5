"""The engine's batches: planned before any image is loaded, then loaded onto the device.

A plan is the run's batches as sample indices (consecutive samples of equal size, at most
the batch size), made from the samples' sizes alone (a header read for image files): every
rank of a torchrun job knows every batch, and each batch is numbered, and its random draws
seeded, the same whichever rank runs it.

Loading happens in the audit's process by default.  With ``workers`` above 0, a
``torch.utils.data.DataLoader`` decodes the next batches in worker processes while the
device works on this one; on CUDA its host tensors are pinned and copied without blocking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from audit.errors import DataError

#: batches a loader worker prepares ahead of the one the device runs
PREFETCH = 2


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # N x 3 x H x W on the engine's device, [0, 1]
    masks: torch.Tensor  # N x H x W int64 on the engine's device
    names: tuple[str, ...]
    indices: tuple[int, ...]
    #: the batch's place in the run's batch plan, the same whichever rank runs it: what
    #: per-batch random draws are seeded with
    number: int = 0


def image_size(dataset: Any, index: int) -> tuple[int, int]:
    """``(H, W)`` of sample ``index``; a dataset that only quacks like
    :class:`~audit.data.base.SegmentationDataset` (no ``image_size``) loads the sample."""
    size = getattr(dataset, "image_size", None)
    h, w = size(index) if size is not None else dataset[index].image.shape[-2:]
    return int(h), int(w)


def plan_batches(dataset: Any, num_samples: int, batch_size: int) -> tuple[tuple[int, ...], ...]:
    """The first ``num_samples`` samples in batches: consecutive samples of equal size, at
    most ``batch_size`` of them (a size change starts a new batch)."""
    batches: list[list[int]] = []
    previous = None
    for index in range(num_samples):
        shape = image_size(dataset, index)
        if not batches or shape != previous or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(index)
        previous = shape
    return tuple(tuple(b) for b in batches)


class _PlannedBatches(Dataset):
    """Batches of a plan as a map-style dataset, for a DataLoader's workers: item ``k`` is
    the ``k``-th batch stacked on the host."""

    def __init__(self, dataset: Any, batches: Sequence[tuple[int, ...]]) -> None:
        self.dataset = dataset
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        samples = _load(self.dataset, self.batches[k])
        images = torch.stack([s.image.to(torch.float32) for s in samples])
        masks = torch.stack([s.mask.to(torch.int64) for s in samples])
        return images, masks, [s.name for s in samples]


def _load(dataset: Any, indices: Sequence[int]) -> list[Any]:
    samples = [dataset[i] for i in indices]
    shape = samples[0].image.shape
    for index, sample in zip(indices, samples, strict=True):
        if sample.image.shape != shape:
            raise DataError(
                f"sample {index} ({sample.name}) is {tuple(sample.image.shape[-2:])} but the "
                f"dataset said {image_size(dataset, index)}, like sample {indices[0]}"
            )
    return samples


def load_batches(
    dataset: Any,
    plan: Sequence[tuple[int, ...]],
    numbers: Sequence[int],
    device: torch.device,
    *,
    workers: int = 0,
) -> Iterator[Batch]:
    """Batches ``numbers`` of ``plan``, loaded onto ``device`` in order."""
    cuda = device.type == "cuda"
    if workers <= 0:
        for number in numbers:
            samples = _load(dataset, plan[number])
            # Each sample goes to the device first and is stacked there: stacking large
            # images on the host is a copy that costs as much as a small network's pass.
            images = torch.stack([_to(s.image, device, torch.float32, cuda) for s in samples])
            masks = torch.stack([_to(s.mask, device, torch.int64, cuda) for s in samples])
            names = tuple(s.name for s in samples)
            yield Batch(images, masks, names, tuple(plan[number]), number)
        return
    loader = DataLoader(
        _PlannedBatches(dataset, [plan[n] for n in numbers]),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=PREFETCH,
        pin_memory=cuda,
    )
    for number, (images, masks, names) in zip(numbers, loader, strict=True):
        yield Batch(
            images.to(device, non_blocking=cuda),
            masks.to(device, non_blocking=cuda),
            tuple(names),
            tuple(plan[number]),
            number,
        )


def _to(t: torch.Tensor, device: torch.device, dtype: torch.dtype, cuda: bool) -> torch.Tensor:
    if cuda:
        # pinned, so that the copy overlaps the device's work on the previous batch
        return t.to(dtype).pin_memory().to(device, non_blocking=True)
    return t.to(device, dtype)

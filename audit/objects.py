"""Ground-truth objects by size, as additive state: are small objects the first to go?

Halmosi et al. (ECCV 2024) found that attacks on segmentation models erase small objects
first, long before the dataset-level mIoU moves much, because IoU weighs every pixel the
same and small objects have few pixels.  This module counts, per image and size bucket, how
many ground-truth objects a prediction still finds.

Definitions (the report and ``docs/results-schema.md`` say the same):

* **object**: a connected component of one class's ground-truth mask, 8-connected; pixels
  with the ignore label belong to no object (and split an object they cut through).
* **size bucket**: the object's area as a fraction of the image's area (all its pixels,
  ignored ones included), with thresholds ``(small, large)``: *small* below ``small``,
  *large* at or above ``large``, *medium* in between.  Fractions, not pixel counts, so the
  buckets mean the same at any resolution.
* **detected**: at least half of the object's pixels are predicted as its class.
* **object recall**: detected objects / objects.  **pixel recall**: pixels of the bucket's
  objects predicted as their class / pixels of those objects (their pixel accuracy).  No
  IoU: a false positive belongs to no ground-truth object, so it has no bucket.

State per image is a ``3 x 4`` integer array (buckets x :data:`COUNTS`); it sums over images,
batches and processes like a confusion matrix, and every score is computed from the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audit.config import DEFAULT_SIZE_BUCKETS

#: size buckets, smallest first
BUCKETS: tuple[str, ...] = ("small", "medium", "large")
#: what is counted per image and bucket, in this order
COUNTS: tuple[str, ...] = ("objects", "detected", "pixels", "pixels_correct")
#: the share of an object's pixels that must be predicted as its class to detect it
DETECTED_SHARE = 0.5


def check_size_buckets(size_buckets: Sequence[float]) -> tuple[float, float]:
    """``(small, large)`` area fractions with ``0 < small < large <= 1``; ``ValueError`` else."""
    values = tuple(float(v) for v in size_buckets)
    if len(values) != 2 or not 0.0 < values[0] < values[1] <= 1.0:
        raise ValueError(
            f"size buckets must be two area fractions 0 < small < large <= 1, got {size_buckets!r}"
        )
    return values[0], values[1]


def label_components(masks: torch.Tensor, ignore_index: int | None = 255) -> torch.Tensor:
    """8-connected components of equal labels in an ``N x H x W`` (or ``H x W``) mask.

    Returns int64 ids of the same shape: ``0 .. n-1`` numbered over the whole batch (no
    component spans two images), ``-1`` on ignored pixels.  Pure torch on the masks' device:
    horizontal runs first, then the edges between rows merged by hooking larger roots onto
    smaller ones and pointer jumping, which needs a few rounds for any shape (label
    propagation would need as many rounds as the longest object is long).
    """
    squeeze = masks.dim() == 2
    if squeeze:
        masks = masks.unsqueeze(0)
    if masks.dim() != 3:
        raise ValueError(f"masks must be H x W or N x H x W, got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    masks = masks.long()
    valid = (
        masks != ignore_index
        if ignore_index is not None
        else torch.ones_like(masks, dtype=torch.bool)
    )
    index = torch.arange(n * h * w, device=masks.device).view(n, h, w)

    # Each pixel starts at the first pixel of its run of one label within its row.
    joins_left = torch.zeros_like(valid)
    joins_left[:, :, 1:] = (
        (masks[:, :, 1:] == masks[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    )
    parent = torch.where(joins_left, torch.zeros_like(index), index).cummax(dim=2).values.flatten()

    # Edges between a row and the next one: straight down and both diagonals.
    grid = parent.view(n, h, w)
    tops, bottoms = [], []
    for dx in (0, 1, -1):
        top = (slice(None), slice(None, -1), slice(max(0, -dx), w - max(0, dx)))
        bottom = (slice(None), slice(1, None), slice(max(0, dx), w - max(0, -dx)))
        up, down = grid[top], grid[bottom]
        same = (masks[top] == masks[bottom]) & valid[top] & valid[bottom]
        # A run above a run gives the same pair of roots at every column they share: the
        # first column of each stretch is enough (and saves sorting millions of pairs).
        repeat = torch.zeros_like(same)
        repeat[:, :, 1:] = (
            same[:, :, :-1] & (up[:, :, 1:] == up[:, :, :-1]) & (down[:, :, 1:] == down[:, :, :-1])
        )
        keep = same & ~repeat
        tops.append(up[keep])
        bottoms.append(down[keep])
    a, b = torch.cat(tops), torch.cat(bottoms)

    while a.numel():
        ra, rb = parent[a], parent[b]
        crossing = ra != rb
        a, b, ra, rb = a[crossing], b[crossing], ra[crossing], rb[crossing]
        if not a.numel():
            break
        # ra and rb are roots (the parents are fully compressed): hooking the larger onto
        # the smaller keeps every pointer going down, so no cycle can form.
        parent.scatter_reduce_(0, torch.maximum(ra, rb), torch.minimum(ra, rb), reduce="amin")
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped

    # Every component's root is its first pixel in raster order: numbering the roots in
    # that order numbers the components without sorting.
    flat_valid = valid.flatten()
    is_root = (parent == index.flatten()) & flat_valid
    ids = torch.cumsum(is_root, 0) - 1
    labels = torch.where(flat_valid, ids[parent], torch.full_like(parent, -1))
    labels = labels.view(n, h, w)
    return labels[0] if squeeze else labels


@dataclass(frozen=True)
class Objects:
    """The ground-truth objects of a batch, found once and scored against any prediction."""

    labels: torch.Tensor  # N x H x W int64: object id per pixel, -1 where ignored
    image: torch.Tensor  # per object: the image it is in
    area: torch.Tensor  # per object: its pixels
    bucket: torch.Tensor  # per object: index into BUCKETS

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])


def find_objects(
    masks: torch.Tensor,
    ignore_index: int | None = 255,
    size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
) -> Objects:
    """The connected ground-truth objects of ``N x H x W`` masks, each in its size bucket."""
    small, large = check_size_buckets(size_buckets)
    labels = label_components(masks, ignore_index)
    n, h, w = labels.shape
    valid = labels >= 0
    count = int(labels.max()) + 1 if bool(valid.any()) else 0
    area = torch.bincount(labels[valid], minlength=count)
    image = torch.zeros(count, dtype=torch.int64, device=labels.device)
    image[labels[valid]] = (
        torch.arange(n, device=labels.device).view(n, 1, 1).expand(n, h, w)[valid]
    )
    fraction = area.double() / float(h * w)
    bucket = (fraction >= small).long() + (fraction >= large).long()
    return Objects(labels=labels, image=image, area=area, bucket=bucket)


def object_counts(objects: Objects, pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``N x 3 x 4`` int64 counts (images x :data:`BUCKETS` x :data:`COUNTS`) of ``pred``
    (``N x H x W`` class indices) on the objects of ``masks``."""
    if pred.shape != objects.labels.shape or masks.shape != pred.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)}, masks {tuple(masks.shape)} and objects "
            f"{tuple(objects.labels.shape)} differ in shape"
        )
    n, nb = objects.num_images, len(BUCKETS)
    count = int(objects.area.numel())
    hit = (pred == masks) & (objects.labels >= 0)
    correct = torch.bincount(objects.labels[hit], minlength=count)
    # Integer form of correct / area >= DETECTED_SHARE (one half).
    detected = 2 * correct >= objects.area
    key = objects.image * nb + objects.bucket
    out = torch.zeros(n * nb, len(COUNTS), dtype=torch.int64, device=pred.device)
    out[:, 0] = torch.bincount(key, minlength=n * nb)
    out[:, 1] = torch.bincount(key[detected], minlength=n * nb)
    out[:, 2].index_add_(0, key, objects.area)
    out[:, 3].index_add_(0, key, correct)
    return out.view(n, nb, len(COUNTS))


def size_bucket_counts(
    pred: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int | None = 255,
    size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
) -> torch.Tensor:
    """:func:`find_objects` then :func:`object_counts`: the per-image state in one call."""
    return object_counts(find_objects(masks, ignore_index, size_buckets), pred, masks)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def size_bucket_scores(
    counts: torch.Tensor | np.ndarray, size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS
) -> dict[str, dict[str, Any]]:
    """Bucket name -> counts, ``recall`` and ``pixel_recall`` (``None`` for an empty bucket),
    and the bucket's ``area_fraction`` range, from counts summed over images (or a stack of
    per-image counts, summed here)."""
    small, large = check_size_buckets(size_buckets)
    array = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts)
    if array.ndim == 3:
        array = array.sum(0)
    if array.shape != (len(BUCKETS), len(COUNTS)):
        raise ValueError(f"expected {len(BUCKETS)} x {len(COUNTS)} counts, got {array.shape}")
    ranges = ((0.0, small), (small, large), (large, None))
    out = {}
    for k, name in enumerate(BUCKETS):
        objects, detected, pixels, pixels_correct = (int(v) for v in array[k])
        out[name] = {
            "objects": objects,
            "detected": detected,
            "recall": _ratio(detected, objects),
            "pixels": pixels,
            "pixels_correct": pixels_correct,
            "pixel_recall": _ratio(pixels_correct, pixels),
            "area_fraction": list(ranges[k]),
        }
    return out


class ObjectSizeCounts:
    """Streaming counts: ``update`` per batch, ``merge`` shards, score at the end."""

    def __init__(
        self, ignore_index: int | None = 255, size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS
    ) -> None:
        self.ignore_index = ignore_index
        self.size_buckets = check_size_buckets(size_buckets)
        self.counts = torch.zeros(len(BUCKETS), len(COUNTS), dtype=torch.int64)

    def update(self, pred: torch.Tensor, masks: torch.Tensor) -> None:
        batch = size_bucket_counts(pred, masks, self.ignore_index, self.size_buckets)
        self.counts += batch.sum(0).cpu()

    def merge(self, other: ObjectSizeCounts) -> ObjectSizeCounts:
        if (other.ignore_index, other.size_buckets) != (self.ignore_index, self.size_buckets):
            raise ValueError("cannot merge counts of different ignore index or size buckets")
        merged = ObjectSizeCounts(self.ignore_index, self.size_buckets)
        merged.counts = self.counts + other.counts
        return merged

    def compute(self) -> dict[str, dict[str, Any]]:
        return size_bucket_scores(self.counts, self.size_buckets)


#: memory the ground-truth objects of an :class:`ObjectsCache` may hold (their label maps)
CACHE_BYTES = 512 * 2**20


class ObjectsCache:
    """The objects of the batches an engine runs, found once per batch.

    The masks are the same for every evaluation, and finding components costs about a
    second per 1024x2048 image on a CPU, more than a corrupted forward pass: they are kept
    while they fit in :data:`CACHE_BYTES`; past that the oldest batches are dropped and
    found again when asked for.
    """

    def __init__(self, ignore_index: int, size_buckets: Sequence[float]) -> None:
        self.ignore_index = ignore_index
        self.size_buckets = tuple(size_buckets)
        self._found: dict[tuple[int, ...], Objects] = {}

    def get(self, indices: tuple[int, ...], masks: torch.Tensor) -> Objects:
        """The objects of the batch of samples ``indices``, whose masks are ``masks``."""
        found = self._found.get(indices)
        if found is None:
            found = find_objects(masks, self.ignore_index, self.size_buckets)
            self._found[indices] = found
            held = sum(_bytes(o) for o in self._found.values())
            while held > CACHE_BYTES and len(self._found) > 1:
                held -= _bytes(self._found.pop(next(iter(self._found))))
        return found


def _bytes(objects: Objects) -> int:
    return objects.labels.element_size() * objects.labels.numel()

"""Clean and attack results broken down by what the images show: the condition each image
was taken in (ACDC's fog, night, rain, snow) and the size of the ground-truth objects.

Both are sums of per-image additive state (confusion matrices, object counts) over a subset
of images or objects, so they use the same dataset-level aggregation as the headline numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from audit import metrics
from audit.data.base import SegmentationDataset
from audit.metrics import finite_or_none
from audit.objects import size_bucket_scores


def by_condition(
    per_image: torch.Tensor, dataset: SegmentationDataset
) -> dict[str, dict[str, Any]] | None:
    """Condition -> ``num_samples`` and ``metrics`` (mIoU, pixel accuracy) of the images
    taken in it, from the per-image confusion matrices of samples ``0 .. N-1``; ``None``
    for a dataset without conditions.  A condition the evaluated slice does not reach
    (``limit``) has 0 samples and null metrics."""
    if not dataset.conditions:
        return None
    rows: dict[str, list[int]] = {c: [] for c in dataset.conditions}
    for index in range(int(per_image.shape[0])):
        condition = dataset.condition(index)
        if condition is not None:
            rows.setdefault(condition, []).append(index)
    out = {}
    for condition, indices in rows.items():
        cm = per_image[indices].sum(0) if indices else None
        out[condition] = {
            "num_samples": len(indices),
            "metrics": {
                "miou": finite_or_none(float(metrics.miou(cm))) if cm is not None else None,
                "pixel_accuracy": (
                    finite_or_none(float(metrics.pixel_accuracy(cm))) if cm is not None else None
                ),
            },
        }
    return out


def by_object_size(
    counts: torch.Tensor | None, size_buckets: Sequence[float]
) -> dict[str, dict[str, Any]] | None:
    """Size bucket -> object and pixel counts and recalls (:mod:`audit.objects`), from
    per-image counts; ``None`` when the evaluation kept none."""
    if counts is None:
        return None
    return size_bucket_scores(counts, size_buckets)

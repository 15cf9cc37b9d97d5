"""Tables of results broken down by condition and by object size, from the record's
``by_condition`` and ``by_object_size`` (:mod:`audit.record.breakdowns` writes them).

Every field may be missing or null in a partial or older record; such values read "n/a".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import mapping
from audit.report.format import NA, finite, fmt_count, fmt_num, fmt_pct

#: the buckets :mod:`audit.objects` writes, smallest first; others follow in record order
_BUCKET_ORDER = ("small", "medium", "large")


def condition_rows(clean: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per condition (ACDC's fog, night, ...): images, mIoU, pixel accuracy."""
    rows = []
    for name, entry in mapping(clean.get("by_condition")).items():
        entry = mapping(entry)
        scores = mapping(entry.get("metrics"))
        rows.append(
            {
                "name": str(name),
                "num_samples": fmt_count(entry.get("num_samples")),
                "miou": fmt_num(scores.get("miou")),
                "pixel_accuracy": fmt_num(scores.get("pixel_accuracy")),
            }
        )
    return rows


def _area(bucket: Mapping[str, Any]) -> str:
    bounds = bucket.get("area_fraction")
    if not isinstance(bounds, list) or len(bounds) != 2:
        return NA
    low, high = finite(bounds[0]), finite(bounds[1])
    if high is None and low is not None:
        return f"≥ {fmt_pct(low)}"
    if high is not None and not low:
        return f"< {fmt_pct(high)}"
    if low is not None and high is not None:
        return f"{fmt_pct(low)} – {fmt_pct(high)}"
    return NA


def object_size_rows(by_object_size: Any) -> list[dict[str, str]]:
    """One row per size bucket: its area range, objects, object recall, pixel recall."""
    buckets = mapping(by_object_size)
    names = [b for b in _BUCKET_ORDER if b in buckets] + [
        b for b in buckets if b not in _BUCKET_ORDER
    ]
    rows = []
    for name in names:
        bucket = mapping(buckets[name])
        rows.append(
            {
                "name": str(name),
                "area": _area(bucket),
                "objects": fmt_count(bucket.get("objects")),
                "detected": fmt_count(bucket.get("detected")),
                "recall": fmt_pct(bucket.get("recall")),
                "pixel_recall": fmt_pct(bucket.get("pixel_recall")),
            }
        )
    return rows


def small_object_recall(entry: Mapping[str, Any]) -> str:
    """The share of small ground-truth objects an evaluation still finds; ``n/a`` when not
    recorded or when the images hold no small object."""
    small = mapping(mapping(entry.get("by_object_size")).get("small"))
    return fmt_pct(small.get("recall"))

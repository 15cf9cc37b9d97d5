"""Corruption evaluations as ``results.json`` entries, and their summary per corruption.

One entry per (corruption, severity) computed (``evaluations.corruptions``), and one row per
corruption (``evaluations.corruption_summary``) in the layout of Kamann and Rother's
Cityscapes-C tables: mIoU at each severity, the mean over the severities 1 to 5 that were
evaluated, and that mean over the clean mIoU (the clean-to-corrupted ratio).
"""

from __future__ import annotations

import contextlib
from typing import Any

from audit.engine import Engine
from audit.errors import SegAuditError
from audit.evaluations.clean import evaluate_clean
from audit.metrics import finite_or_none
from audit.record.breakdowns import by_object_size
from audit.record.writer import RunRecorder

HEADLINE = ("miou", "pixel_accuracy", "mean_class_accuracy")


def summarise_corruptions(recorder: RunRecorder, engine: Engine, *, compute: bool) -> None:
    """Add ``corruptions`` and ``corruption_summary`` to the record's evaluations, when any
    corruption evaluation ran."""
    evaluations = [entry.result for entry in engine.logged("corruption")]
    if not evaluations:
        return
    clean_miou = None
    if compute or engine.is_cached(engine.key_parts("clean")):
        with contextlib.suppress(SegAuditError):
            clean_miou = finite_or_none(engine.score(evaluate_clean(engine).per_image, "miou")[0])
    entries = []
    for ev in sorted(evaluations, key=lambda e: (e.corruption, e.severity)):
        scores = {name: finite_or_none(engine.score(ev.per_image, name)[0]) for name in HEADLINE}
        ratio = scores["miou"] / clean_miou if clean_miou and scores["miou"] is not None else None
        entries.append(
            {
                "id": ev.id,
                "corruption": ev.corruption,
                "family": ev.family,
                "severity": ev.severity,
                "resolution": list(ev.resolution) if ev.resolution else None,
                "num_samples": ev.num_samples,
                "metrics": scores,
                "clean_miou": clean_miou,
                "iou_ratio": finite_or_none(ratio),
                "forward_passes": ev.forward_passes,
                "seconds": round(ev.seconds, 4),
                "by_object_size": by_object_size(ev.object_sizes, engine.size_buckets),
            }
        )
    recorder.evaluations["corruptions"] = entries
    recorder.evaluations["corruption_summary"] = corruption_summary(entries, clean_miou)


def corruption_summary(
    entries: list[dict[str, Any]], clean_miou: float | None
) -> list[dict[str, Any]]:
    """One row per corruption: mIoU by severity, the mean over severities 1-5 (those
    evaluated; fractional severities in between are left out of the mean, as the protocol
    has integer ones only) and its ratio to the clean mIoU."""
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        row = rows.setdefault(
            entry["corruption"],
            {"corruption": entry["corruption"], "family": entry["family"], "miou": {}},
        )
        row["miou"][f"{entry['severity']:g}"] = entry["metrics"]["miou"]
    out = []
    for row in rows.values():
        protocol = [
            v
            for k, v in row["miou"].items()
            if float(k) in (1.0, 2.0, 3.0, 4.0, 5.0) and v is not None
        ]
        mean = sum(protocol) / len(protocol) if protocol else None
        out.append(
            {
                **row,
                "severities_in_mean": len(protocol),
                "mean_miou": finite_or_none(mean),
                "ratio_to_clean": finite_or_none(mean / clean_miou)
                if mean is not None and clean_miou
                else None,
            }
        )
    return out

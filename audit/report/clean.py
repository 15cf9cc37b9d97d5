"""The report's "Clean evaluation" (headline metrics, per-class table and IoU chart, examples)
and "Confusion matrix" sections, from ``results["evaluations"]["clean"]``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.accessors import mapping, recorded
from audit.report.breakdowns import condition_rows, object_size_rows
from audit.report.charts import UNIT_TICKS, css_rgb, heat, palette_rgb
from audit.report.format import (
    MISSING,
    NA,
    fmt_interval,
    fmt_number,
    fmt_percent,
    fmt_resolution,
    fmt_short,
    is_number,
)

#: Beyond this many classes a confusion matrix table stops being readable on a page.
MAX_CONFUSION_CLASSES = 40
#: Clean examples drawn in the page (the ``examples`` setting, 4 by default, may ask for
#: more); the others are linked, so the page does not grow with that setting.
CLEAN_GALLERY = 8

_METRIC_LABELS = {
    "miou": "mIoU",
    "pixel_accuracy": "Pixel accuracy",
    "mean_class_accuracy": "Mean class accuracy",
}


def _headline_metrics(clean: Mapping[str, Any]) -> list[dict[str, str]]:
    metrics = mapping(clean.get("metrics"))
    intervals = mapping(clean.get("intervals"))
    # Known metrics in a fixed order, then whatever else the evaluation recorded.
    keys = [k for k in _METRIC_LABELS if k in metrics]
    keys += [k for k in metrics if k not in _METRIC_LABELS]
    return [
        {
            "label": _METRIC_LABELS.get(key, key),
            "value": fmt_number(metrics[key]),
            "interval": fmt_interval(_with_confidence(intervals.get(key), clean)),
        }
        for key in keys
    ]


def _with_confidence(interval: Any, clean: Mapping[str, Any]) -> Any:
    # Clean intervals may omit the level; fall back to the evaluation-wide one if recorded.
    if isinstance(interval, Mapping) and "confidence" not in interval:
        return {**interval, "confidence": clean.get("confidence")}
    return interval


def _per_class(clean: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = [e for e in clean.get("per_class") or [] if isinstance(e, Mapping)]
    supports = [e.get("support") for e in entries if is_number(e.get("support"))]
    total_support = sum(supports) if supports else 0
    rows = []
    for index, entry in enumerate(entries):
        iou = entry.get("iou")
        support = entry.get("support")
        share = support / total_support if is_number(support) and total_support else None
        rows.append(
            {
                "index": index,
                "name": str(entry.get("name") if entry.get("name") is not None else index),
                "color": css_rgb(palette_rgb(entry.get("color"))),
                "iou_value": float(iou) if is_number(iou) and math.isfinite(iou) else None,
                "iou": fmt_number(iou) if iou is not None else NA,
                "accuracy": fmt_number(entry.get("accuracy")),
                "support": fmt_number(support),
                "share": fmt_percent(share) + "%" if share is not None else MISSING,
            }
        )
    return rows


def _iou_chart(rows: Sequence[Mapping[str, Any]], miou: Any) -> dict[str, Any] | None:
    """Geometry of a horizontal bar chart of per-class IoU, drawn as SVG by the partial."""
    if not rows:
        return None
    label_w, bar_w, value_w, row_h, top = 160, 420, 64, 20, 26
    height = top + row_h * len(rows) + 6
    bars = []
    for i, row in enumerate(rows):
        iou = row["iou_value"]
        fraction = min(max(iou, 0.0), 1.0) if iou is not None else 0.0
        bars.append(
            {
                "y": top + i * row_h,
                "text_y": top + i * row_h + row_h // 2 + 4,
                "width": round(fraction * bar_w, 2),
                "color": row["color"],
                "label": fmt_short(row["name"], 22),
                "name": row["name"],
                "value": row["iou"],
            }
        )
    ticks = [{"x": label_w + t * bar_w, "label": f"{t:g}"} for t in UNIT_TICKS]
    miou_x = None
    if is_number(miou) and math.isfinite(miou):
        miou_x = round(label_w + min(max(miou, 0.0), 1.0) * bar_w, 2)
    return {
        "width": label_w + bar_w + value_w,
        "height": height,
        "label_x": label_w - 8,
        "bar_x": label_w,
        "bar_h": row_h - 6,
        "value_x": label_w + bar_w + 6,
        "axis_top": top - 6,
        "axis_bottom": height - 4,
        "tick_y": top - 10,
        "ticks": ticks,
        "bars": bars,
        "miou_x": miou_x,
        "miou_label": f"mIoU {fmt_number(miou)}" if miou_x is not None else "",
    }


def _examples(clean: Mapping[str, Any]) -> list[dict[str, Any]]:
    examples = []
    for index, example in enumerate(clean.get("examples") or []):
        if not isinstance(example, Mapping):
            continue
        examples.append(
            {
                "name": str(example.get("name") or f"example {index + 1}"),
                "image": example.get("image"),
                "ground_truth": example.get("ground_truth"),
                "prediction": example.get("prediction"),
                "pixel_accuracy": fmt_number(example.get("pixel_accuracy")),
            }
        )
    return examples


def build_clean(results: Mapping[str, Any]) -> dict[str, Any] | None:
    clean = recorded(results, "clean")
    if not isinstance(clean, Mapping):
        return None
    per_class = _per_class(clean)
    examples = _examples(clean)
    return {
        "num_samples": fmt_number(clean.get("num_samples")),
        "num_pixels": fmt_number(clean.get("num_pixels")),
        "resolution": fmt_resolution(clean.get("resolution")),
        "aggregation": str(clean.get("aggregation") or ""),
        "metrics": _headline_metrics(clean),
        "per_class": per_class,
        "chart": _iou_chart(per_class, mapping(clean.get("metrics")).get("miou")),
        "by_condition": condition_rows(clean),
        "by_object_size": object_size_rows(clean.get("by_object_size")),
        "examples": examples[:CLEAN_GALLERY],
        "linked": examples[CLEAN_GALLERY:],
    }


def build_confusion(results: Mapping[str, Any]) -> dict[str, Any] | None:
    clean = mapping(recorded(results, "clean"))
    matrix = clean.get("confusion_matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    n = len(matrix)
    if any(not isinstance(row, list) or len(row) != n for row in matrix) or not all(
        is_number(v) for row in matrix for v in row
    ):
        return {"note": "The recorded confusion matrix is not a square table of numbers.", "n": n}
    if n > MAX_CONFUSION_CLASSES:
        return {
            "note": f"{n} classes are too many for a readable table; see results.json.",
            "n": n,
        }
    names = [str(e.get("name")) for e in clean.get("per_class") or [] if isinstance(e, Mapping)]
    if len(names) != n:
        names = [str(i) for i in range(n)]
    rows = []
    for i, row in enumerate(matrix):
        total = sum(row)
        cells = []
        for j, count in enumerate(row):
            fraction = count / total if total else 0.0
            background, color = heat(fraction)
            cells.append(
                {
                    "text": fmt_percent(fraction) if total else MISSING,
                    "background": background,
                    "color": color,
                    "diagonal": i == j,
                    "title": f"truth {names[i]} → predicted {names[j]}: {count:,} pixels",
                }
            )
        rows.append({"index": i, "name": names[i], "total": fmt_number(total), "cells": cells})
    return {"note": "", "n": n, "columns": list(range(n)), "rows": rows}

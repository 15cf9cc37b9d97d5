"""Per-class IoU under attack, for the Attacks section: which classes an attack takes apart.

Each attack entry records ``per_class`` (class name -> dataset-level IoU under the attack,
from the confusion matrix its mIoU comes from).  The table sets the clean IoU of each class
beside its IoU under the strongest attack of each norm: among the evaluations at the norm's
largest epsilon, the one with the lowest mIoU.  Worst classes first (lowest IoU under any of
those attacks), so the classes that break are at the top whatever their number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.accessors import as_list, mapping, recorded
from audit.report.attack_curves import Evaluation, norm_label
from audit.report.charts import css_rgb, palette_rgb
from audit.report.format import NA, finite, fmt_num


def _strongest(evaluations: Sequence[Evaluation], norm: str) -> Evaluation | None:
    candidates = [
        e
        for e in evaluations
        if e.norm == norm
        and not e.is_noise
        and e.eps is not None
        and isinstance(e.raw.get("per_class"), Mapping)
    ]
    if not candidates:
        return None
    top = max(e.eps or 0.0 for e in candidates)
    at_top = [e for e in candidates if e.eps == top]

    def damage(e: Evaluation) -> tuple[float, int]:
        miou = finite(e.metrics.get("miou"))
        return (miou if miou is not None else float("inf"), e.index)

    return min(at_top, key=damage)


def _delta(clean: float | None, attacked: float | None) -> str:
    if clean is None or attacked is None:
        return ""
    return f"{attacked - clean:+.3f}"


def per_class_under_attack(
    results: Mapping[str, Any], evaluations: Sequence[Evaluation]
) -> dict[str, Any] | None:
    """Context of the per-class table, or ``None`` when no attack entry records per-class IoU."""
    norms: list[str] = []
    for evaluation in evaluations:
        if evaluation.norm is not None and evaluation.norm not in norms:
            norms.append(evaluation.norm)
    chosen = [(norm, e) for norm in norms if (e := _strongest(evaluations, norm)) is not None]
    if not chosen:
        return None
    clean_rows = [
        row
        for row in as_list(mapping(recorded(results, "clean")).get("per_class"))
        if isinstance(row, Mapping) and isinstance(row.get("name"), str)
    ]
    clean = {row["name"]: row for row in clean_rows}
    names = [row["name"] for row in clean_rows]
    for _, evaluation in chosen:
        names += [str(n) for n in evaluation.raw["per_class"] if str(n) not in names]
    rows = []
    for position, name in enumerate(names):
        clean_iou = finite(clean.get(name, {}).get("iou"))
        cells, attacked = [], []
        for _, evaluation in chosen:
            value = finite(mapping(evaluation.raw["per_class"]).get(name))
            if value is not None:
                attacked.append(value)
            cells.append({"iou": fmt_num(value), "delta": _delta(clean_iou, value)})
        worst = min(attacked) if attacked else None
        color = clean.get(name, {}).get("color")
        rows.append(
            {
                "sort": (worst is None, worst if worst is not None else 0.0, position),
                "name": name,
                "color": css_rgb(palette_rgb(color)) if color is not None else "",
                "clean": fmt_num(clean_iou) if name in clean else NA,
                "cells": cells,
            }
        )
    rows.sort(key=lambda row: row["sort"])
    return {
        "columns": [
            {
                "norm": norm_label(norm),
                "attack": evaluation.label,
                "eps": evaluation.eps_text,
                "id": evaluation.id,
            }
            for norm, evaluation in chosen
        ],
        "rows": [{k: v for k, v in row.items() if k != "sort"} for row in rows],
    }

"""The report's "Corruptions" section: mIoU against severity per corruption (one panel per
family) and a table in Kamann and Rother's layout (rows: corruptions grouped by family;
columns: severity 1 to 5, their mean, the ratio to clean; a clean row on top), from
``results["evaluations"]["corruptions"]`` and ``["corruption_summary"]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import as_list, mapping
from audit.report.charts import MARKERS, PALETTE, UNIT_TICKS, PlotArea, marker_path, spaced_ticks
from audit.report.format import MISSING, finite, fmt_tick

_PLOT = PlotArea(left=52, width=300, top=30, height=190, right=14)
SEVERITY_COLUMNS = ("1", "2", "3", "4", "5")
FAMILY_ORDER = ("noise", "blur", "weather", "digital", "occlusion")


def _fmt(value: Any) -> str:
    """Three decimals, as the paper's tables print mIoU."""
    number = finite(value)
    return MISSING if number is None else f"{number:.3f}"


def _panel(family: str, rows: list[Mapping[str, Any]], clean: float | None) -> dict[str, Any]:
    to_x = _PLOT.linear_x(5.0)
    to_y = _PLOT.linear_y(1.0)
    lines = []
    legend_items = []
    for i, row in enumerate(rows):
        points = sorted(
            (float(k), v) for k, v in mapping(row.get("miou")).items() if finite(v) is not None
        )
        if clean is not None:
            points = [(0.0, clean), *[p for p in points if p[0] > 0]]
        color, shape = PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]
        lines.append(
            {
                "label": str(row.get("corruption")),
                "color": color,
                "points_attr": " ".join(f"{to_x(x)},{to_y(y)}" for x, y in points),
                "points": [
                    {
                        "path": marker_path(shape, to_x(x), to_y(y)),
                        "title": f"{row.get('corruption')} at severity {x:g}: mIoU {y:.3f}",
                    }
                    for x, y in points
                ],
            }
        )
        legend_items.append({"label": str(row.get("corruption")), "color": color, "shape": shape})
    legend, height = _PLOT.legend_below(legend_items, gap=40, short_at=18, max_chars=40)
    x_ticks, _ = spaced_ticks([(float(s), s) for s in ("0", *SEVERITY_COLUMNS)], to_x)
    return {
        "title": family,
        "width": _PLOT.outer_width,
        "height": height,
        **_PLOT.frame(32),
        "x_ticks": x_ticks,
        "y_ticks": [{"y": to_y(v), "label": fmt_tick(v)} for v in UNIT_TICKS],
        "clean_y": to_y(clean) if clean is not None else None,
        "lines": lines,
        "legend": legend,
        "description": ", ".join(line["label"] for line in lines),
    }


def build_corruptions(results: Mapping[str, Any]) -> dict[str, Any] | None:
    evaluations = mapping(results.get("evaluations"))
    entries = [e for e in as_list(evaluations.get("corruptions")) if isinstance(e, Mapping)]
    summary = [r for r in as_list(evaluations.get("corruption_summary")) if isinstance(r, Mapping)]
    if not entries and not summary:
        return None
    clean = next(
        (finite(e.get("clean_miou")) for e in entries if finite(e.get("clean_miou"))), None
    )
    families: dict[str, list[Mapping[str, Any]]] = {}
    for row in summary:
        families.setdefault(str(row.get("family") or "other"), []).append(row)
    order = [f for f in FAMILY_ORDER if f in families] + [
        f for f in families if f not in FAMILY_ORDER
    ]
    groups = []
    for family in order:
        groups.append(
            {
                "family": family,
                "rows": [
                    {
                        "corruption": str(row.get("corruption")),
                        "cells": [
                            _fmt(mapping(row.get("miou")).get(s))
                            if s in mapping(row.get("miou"))
                            else MISSING
                            for s in SEVERITY_COLUMNS
                        ],
                        "mean": _fmt(row.get("mean_miou")),
                        "ratio": _fmt(row.get("ratio_to_clean")),
                    }
                    for row in families[family]
                ],
            }
        )
    return {
        "count": len(entries),
        "clean": _fmt(clean),
        "severities": SEVERITY_COLUMNS,
        "panels": [_panel(f, families[f], clean) for f in order],
        "groups": groups,
        "images": next((e.get("num_samples") for e in entries), None),
    }

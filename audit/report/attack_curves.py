"""The Attacks section's robustness curves: IoU ratio against epsilon, one panel per norm.

The curves follow Arnab et al. (CVPR 2018): IoU ratio (adversarial mIoU over clean mIoU) on a
log epsilon axis, one line per attack and parameter set.  Over them: each attack claim's
threshold (dash-dot) over the epsilons its sweep covers and its interval (an error bar at its
epsilon), and a baseline run's curve (dotted, same colour) when the record has one.  A claim
on mIoU is drawn as IoU ratio by dividing by the clean mIoU the entries record (the same
division that makes the curve); a claim on any other metric has no place on this axis and is
counted, not drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit.report.accessors import claims, mapping
from audit.report.charts import MARKERS, PALETTE, PlotArea, marker_path, spaced_ticks
from audit.report.format import NA, finite, fmt_bound, fmt_num, fmt_params, fmt_resolution
from audit.report.overlays import (
    BASELINE_COLOR,
    BASELINE_DASH,
    THRESHOLD_COLOR,
    THRESHOLD_DASH,
    ClaimMark,
    baseline_values,
    claim_bounds,
    claim_interval,
    interval_bars,
    sweep_group,
    threshold_lines,
    trend,
)

NOISE_COLOR = "#6e7781"
NORM_LABELS = {"linf": "Linf", "l2": "L2"}
#: claim metrics the IoU-ratio axis can show, and the division that puts them on it
_RATIO_METRICS = ("iou_ratio", "miou")

# Chart geometry, in SVG user units (pixels at 100 % zoom).
_PLOT = PlotArea(left=58, width=470, top=34, height=250, right=18)
#: Legend labels up to this many characters fit two to a row; longer ones get a row each.
_LEGEND_SHORT, _LEGEND_CHARS = 30, 68


def norm_label(norm: str | None) -> str:
    if norm is None:
        return NA
    return NORM_LABELS.get(norm, norm)


@dataclass
class Evaluation:
    """One attacks entry, normalised: what the table, curves and examples read."""

    index: int
    raw: Mapping[str, Any]
    id: str
    attack: str
    params: Mapping[str, Any]
    norm: str | None
    eps: float | None
    eps_text: str
    ratio: float | None
    claims: list[dict[str, str]] = field(default_factory=list)

    @property
    def params_label(self) -> str:
        return fmt_params(self.params)

    @property
    def label(self) -> str:
        return f"{self.attack} ({self.params_label})" if self.params_label else self.attack

    @property
    def series_key(self) -> str:
        # Attack plus canonical parameters: one colour and marker for it in every panel.
        return self.attack + "\0" + json.dumps(self.params, sort_keys=True, default=str)

    @property
    def metrics(self) -> Mapping[str, Any]:
        return mapping(self.raw.get("metrics"))

    @property
    def is_noise(self) -> bool:
        return self.attack == "noise" or self.raw.get("family") == "random"

    @property
    def failed(self) -> bool:
        return any(claim["verdict_css"] == "fail" for claim in self.claims)


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    dashed: bool


def styles(ordered: Sequence[Evaluation]) -> dict[str, Style]:
    """One colour and marker per attack and parameter set; noise is dashed grey."""
    out: dict[str, Style] = {}
    attacks = 0
    for evaluation in ordered:
        if evaluation.series_key in out:
            continue
        if evaluation.is_noise:
            out[evaluation.series_key] = Style(NOISE_COLOR, "circle", True)
            continue
        out[evaluation.series_key] = Style(
            PALETTE[attacks % len(PALETTE)], MARKERS[attacks % len(MARKERS)], False
        )
        attacks += 1
    return out


def _y_top(values: Sequence[float]) -> float:
    highest = max(values, default=1.0)
    return 1.0 if highest <= 1.0 else math.ceil(highest * 4) / 4


def _resolution_note(evaluations: Sequence[Evaluation]) -> str:
    seen = []
    for evaluation in evaluations:
        resolution = evaluation.raw.get("resolution")
        text = fmt_resolution(resolution) if resolution is not None else None
        if text not in seen:
            seen.append(text)
    known = [text for text in seen if text is not None]
    if not known:
        return "input resolution not recorded"
    if len(known) == 1 and len(seen) == 1:
        return f"input resolution {known[0]}"
    return "mixed input resolutions: " + "; ".join(known + ([NA] if None in seen else []))


@dataclass
class _Overlays:
    """What a panel draws besides its curves."""

    marks: list[ClaimMark] = field(default_factory=list)
    other_metric: int = 0  # claims on a metric this axis cannot show


def _claim_marks(
    results: Mapping[str, Any],
    plotted: Sequence[Evaluation],
    styles_: Mapping[str, Style],
    series_rank: Mapping[str, int],
) -> _Overlays:
    by_id = {e.id: e for e in plotted}
    out = _Overlays()
    for claim in claims(results):
        if claim.get("kind") != "attack":
            continue
        evaluation = by_id.get(str(mapping(claim.get("evidence")).get("evaluation")))
        if evaluation is None or evaluation.eps is None:
            continue
        metric = claim.get("metric") or mapping(claim.get("params")).get("metric")
        if metric not in _RATIO_METRICS:
            out.other_metric += 1
            continue
        scale, note, quantity = 1.0, "", "IoU ratio"
        if metric == "miou":
            clean = finite(evaluation.raw.get("clean_miou"))
            if clean is None or clean <= 0:
                out.other_metric += 1
                continue
            # The curve is mIoU / clean mIoU, so the claim's mIoU bounds divide the same way.
            bounds = claim_bounds(claim)
            scale, quantity = clean, "mIoU / clean mIoU"
            note = "mIoU " + ", ".join(
                f"{'≥' if s == 'min' else '≤'} {fmt_bound(v)}" for s, v in bounds
            )
            note += f" over clean mIoU {fmt_num(clean)}"
        style = styles_[evaluation.series_key]
        out.marks.append(
            ClaimMark(
                group=sweep_group(claim),
                name=str(claim.get("id") or claim.get("nodeid") or evaluation.id),
                x=evaluation.eps,
                x_text=evaluation.eps_text,
                bounds=claim_bounds(claim, scale),
                interval=claim_interval(claim, scale),
                quantity=quantity,
                note=note,
                color=style.color,
                series=series_rank[evaluation.series_key],
            )
        )
    return out


def _baseline_ratios(results: Mapping[str, Any], plotted: Sequence[Evaluation]) -> dict[str, float]:
    """Evaluation id -> the baseline's IoU ratio: its attacked mIoU over its clean mIoU."""
    values = baseline_values(results)
    clean = values.get(("clean", "miou"))
    if clean is None or clean <= 0:
        return {}
    return {e.id: values[(e.id, "miou")] / clean for e in plotted if (e.id, "miou") in values}


def _describe(
    title: str, lines: Sequence[dict[str, Any]], thresholds: Sequence[dict[str, Any]]
) -> str:
    parts = [
        f"IoU ratio under {line['label']} ({title}) at eps "
        f"{', '.join(line['eps_texts'])}: {trend(line['values'])}"
        for line in lines
    ]
    text = "; ".join(parts)
    if thresholds:
        text += ". Claim thresholds: " + "; ".join(t["label"] for t in thresholds)
    return text + "."


def panel(
    norm: str,
    evaluations: Sequence[Evaluation],
    styles_: Mapping[str, Style],
    results: Mapping[str, Any],
) -> dict[str, Any] | None:
    """One norm's chart, with its claims' thresholds and intervals and a baseline's curve."""
    plotted = [e for e in evaluations if e.eps is not None and e.eps > 0 and e.ratio is not None]
    skipped = len(evaluations) - len(plotted)
    if not plotted:
        return None
    eps_labels: dict[float, str] = {}
    for evaluation in sorted(plotted, key=lambda e: e.eps or 0.0):
        eps_labels.setdefault(round(evaluation.eps or 0.0, 12), evaluation.eps_text)
    low, high = math.log10(min(eps_labels)), math.log10(max(eps_labels))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.06
    low, high = low - pad, high + pad
    order = {key: i for i, key in enumerate(styles_)}
    series: dict[str, list[Evaluation]] = {}
    for evaluation in plotted:
        series.setdefault(evaluation.series_key, []).append(evaluation)
    keys = sorted(series, key=order.__getitem__)
    rank = {key: i for i, key in enumerate(keys)}
    overlays = _claim_marks(results, plotted, styles_, rank)
    baseline = _baseline_ratios(results, plotted)
    y_top = _y_top(
        [e.ratio for e in plotted if e.ratio is not None]
        + [value for mark in overlays.marks for _, value in mark.bounds]
        + list(baseline.values())
    )

    def to_x(eps: float) -> float:
        return round(_PLOT.left + (math.log10(eps) - low) / (high - low) * _PLOT.width, 1)

    to_y = _PLOT.linear_y(y_top)
    ticks, minor = spaced_ticks(sorted(eps_labels.items()), to_x)
    steps = round(y_top / 0.25)
    stride = 1 if steps <= 8 else 2
    y_ticks = [
        {"y": to_y(i * 0.25), "label": f"{i * 0.25:g}", "unit": i * 0.25 == 1.0}
        for i in range(0, steps + 1, stride)
    ]
    title = norm_label(norm)
    lines, baselines = [], []
    for key in keys:
        style = styles_[key]
        members = sorted(series[key], key=lambda e: (e.eps or 0.0, e.index))
        label = members[0].label
        points = []
        for e in members:
            x, y = to_x(e.eps or 0.0), to_y(e.ratio or 0.0)
            points.append(
                {
                    "x": x,
                    "y": y,
                    "path": marker_path(style.marker, x, y),
                    "title": (
                        f"{label}, {title} eps {e.eps_text}: IoU ratio "
                        f"{fmt_num(e.ratio)}, mIoU {fmt_num(e.metrics.get('miou'))}"
                    ),
                }
            )
        lines.append(
            {
                "label": label,
                "color": style.color,
                "dashed": style.dashed,
                "hollow": style.dashed,
                "shape": style.marker,
                "points_attr": " ".join(f"{p['x']},{p['y']}" for p in points),
                "points": points,
                "eps_texts": [e.eps_text for e in members],
                "values": [e.ratio or 0.0 for e in members],
            }
        )
        old = [(e, baseline[e.id]) for e in members if e.id in baseline]
        if old:
            baselines.append(
                {
                    "color": style.color,
                    "points_attr": " ".join(f"{to_x(e.eps or 0.0)},{to_y(v)}" for e, v in old),
                    "title": f"baseline run, {label} ({title}): IoU ratio at eps "
                    f"{', '.join(e.eps_text for e, _ in old)}: {trend([v for _, v in old])}",
                }
            )
    thresholds = threshold_lines(
        overlays.marks, to_x, to_y, left=_PLOT.left, right=_PLOT.left + _PLOT.width
    )
    intervals = interval_bars(overlays.marks, to_x, to_y, series_count=len(keys))
    legend_items: list[dict[str, Any]] = [{**line, "dash": "", "bar": False} for line in lines]
    extra = (
        (bool(baselines), "baseline", BASELINE_COLOR, BASELINE_DASH, False),
        (bool(thresholds), "claim threshold", THRESHOLD_COLOR, THRESHOLD_DASH, False),
        (bool(intervals), "claim interval (error bar)", THRESHOLD_COLOR, "", True),
    )
    for shown, label, color, dash, bar in extra:
        if shown:
            legend_items.append(
                {"label": label, "color": color, "dash": dash, "bar": bar, "dashed": False,
                 "hollow": False}
            )  # fmt: skip
    legend, height = _PLOT.legend_below(
        legend_items, gap=58, short_at=_LEGEND_SHORT, max_chars=_LEGEND_CHARS
    )
    return {
        "norm": norm,
        "title": f"{title} threat model",
        "description": _describe(title, lines, thresholds),
        "resolution": _resolution_note(evaluations),
        "width": _PLOT.outer_width,
        "height": height,
        **_PLOT.frame(x_title_gap=38),
        "x_title": f"epsilon ({title}, [0,1] pixel space; log scale)",
        "y_title": "IoU ratio (adversarial / clean mIoU)",
        "x_ticks": ticks,
        "x_minor": minor,
        "y_ticks": y_ticks,
        "lines": lines,
        "baselines": baselines,
        "thresholds": thresholds,
        "intervals": intervals,
        "other_metric_claims": overlays.other_metric,
        "legend": legend,
        "skipped": skipped,
    }


def panels(
    ordered: Sequence[Evaluation], styles_: Mapping[str, Style], results: Mapping[str, Any]
) -> list[dict[str, Any]]:
    norms: list[str] = []
    for evaluation in ordered:
        if evaluation.norm is not None and evaluation.norm not in norms:
            norms.append(evaluation.norm)
    out = []
    for norm in norms:
        chart = panel(norm, [e for e in ordered if e.norm == norm], styles_, results)
        if chart is not None:
            out.append(chart)
    return out

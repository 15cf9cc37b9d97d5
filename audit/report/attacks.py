"""The report's "Attacks" section: robustness curves, the evaluation table and diagnostics.

:func:`build_attacks` turns ``results["evaluations"]["attacks"]`` (one entry per attack, norm
and epsilon), ``results["diagnostics"]`` and ``results["evaluations"]["min_norm"]`` into the
context of ``_attacks.html.j2``.  The curves follow Arnab et al., "On the Robustness of Semantic
Segmentation Models to Adversarial Attacks" (CVPR 2018): IoU ratio (adversarial mIoU over
clean mIoU) against epsilon on a log axis, one line per attack, one panel per norm.  They are
drawn here as SVG geometry, so the page needs no script and no external asset.

Every field may be missing, null or NaN in a partial or older results file; such values read
"n/a" and are left out of the curves, never raise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit.report.accessors import as_list, claim_ref, mapping, recorded
from audit.report.charts import (
    MARKERS,
    PALETTE,
    PlotArea,
    marker_path,
    spaced_ticks,
)
from audit.report.embed import THUMBNAIL_SIDE
from audit.report.format import (
    NA,
    finite,
    fmt_any,
    fmt_compact_resolution,
    fmt_duration,
    fmt_eps,
    fmt_num,
    fmt_params,
    fmt_pct,
    fmt_radius,
    fmt_resolution,
    fmt_text,
)

# Re-exported: the palette, markers and checks a reader of this section's tests looks up here.
__all__ = ["GALLERY_EXAMPLES", "MARKERS", "NOISE_COLOR", "PALETTE", "build_attacks"]

NOISE_COLOR = "#6e7781"
#: Worst examples of each evaluation drawn in the page; the others the record keeps are
#: linked.  Two show whether the worst case is a one-off; each adds about 25 kB (its
#: adversarial input, perturbation and prediction; the input, ground truth and clean
#: prediction are shared), so ``arnab2018``'s 40 evaluations take about 2 MB of page.
GALLERY_EXAMPLES = 2
#: Longest side of a perturbation's thumbnail: the amplified perturbation is pixel-level
#: noise that a 160-pixel cell shows as texture at any resolution, and at full thumbnail
#: size it was half the bytes of the page.
PERTURBATION_SIDE = THUMBNAIL_SIDE // 2

_NORM_ORDER = {"linf": 0, "l2": 1}
_NORM_LABELS = {"linf": "Linf", "l2": "L2"}
_FAMILY_ORDER = {"single_step": 0, "iterative": 1, "min_norm": 2, "random": 3}
_QUANTILES = ("0.1", "0.25", "0.5", "0.75", "0.9")

# Chart geometry, in SVG user units (pixels at 100 % zoom).
_PLOT = PlotArea(left=58, width=470, top=34, height=250, right=18)
#: Legend labels up to this many characters fit two to a row; longer ones get a row each.
_LEGEND_SHORT, _LEGEND_CHARS = 30, 68


def _norm_label(norm: str | None) -> str:
    if norm is None:
        return NA
    return _NORM_LABELS.get(norm, norm)


@dataclass
class _Evaluation:
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


def _iou_ratio(entry: Mapping[str, Any]) -> float | None:
    ratio = finite(entry.get("iou_ratio"))
    if ratio is not None:
        return ratio
    miou = finite(mapping(entry.get("metrics")).get("miou"))
    clean = finite(entry.get("clean_miou"))
    if miou is not None and clean is not None and clean > 0:
        return miou / clean
    return None


def _evaluations(results: Mapping[str, Any]) -> list[_Evaluation]:
    entries = as_list(recorded(results, "attacks"))
    evaluations = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        norm = entry.get("norm")
        norm = norm.lower() if isinstance(norm, str) and norm else None
        eps = finite(entry.get("eps"))
        eps_text = entry.get("eps_text")
        if not isinstance(eps_text, str) or not eps_text:
            eps_text = fmt_eps(eps) if eps is not None else NA
        evaluations.append(
            _Evaluation(
                index=index,
                raw=entry,
                id=str(entry.get("id") or f"attack {index + 1}"),
                attack=str(entry.get("attack") or "unknown attack"),
                params=mapping(entry.get("params")),
                norm=norm,
                eps=eps,
                eps_text=eps_text,
                ratio=_iou_ratio(entry),
            )
        )
    return evaluations


def _attach_claims(results: Mapping[str, Any], evaluations: Sequence[_Evaluation]) -> None:
    by_id = {evaluation.id: evaluation for evaluation in evaluations}
    # NB: numbered over the raw list, while the claims table numbers only its mapping
    # entries, so a malformed entry ahead of a claim shifts this link by one.
    for index, claim in enumerate(as_list(results.get("claims"))):
        if not isinstance(claim, Mapping):
            continue
        target = mapping(claim.get("evidence")).get("evaluation")
        if isinstance(target, str) and target in by_id:
            by_id[target].claims.append(claim_ref(index, claim))


def _group_order(evaluation: _Evaluation) -> tuple[Any, ...]:
    family = evaluation.raw.get("family")
    return (
        evaluation.is_noise,
        _FAMILY_ORDER.get(family, len(_FAMILY_ORDER)) if isinstance(family, str) else 9,
        evaluation.attack,
        evaluation.params_label,
    )


def _row_order(evaluation: _Evaluation) -> tuple[Any, ...]:
    norm = evaluation.norm
    return (
        *_group_order(evaluation),
        _NORM_ORDER.get(norm, len(_NORM_ORDER)) if norm else 9,
        norm or "",
        evaluation.eps is None,
        evaluation.eps or 0.0,
        evaluation.index,
    )


@dataclass(frozen=True)
class _Style:
    color: str
    marker: str
    dashed: bool


def _styles(ordered: Sequence[_Evaluation]) -> dict[str, _Style]:
    styles: dict[str, _Style] = {}
    attacks = 0
    for evaluation in ordered:
        if evaluation.series_key in styles:
            continue
        if evaluation.is_noise:
            styles[evaluation.series_key] = _Style(NOISE_COLOR, "circle", True)
            continue
        styles[evaluation.series_key] = _Style(
            PALETTE[attacks % len(PALETTE)], MARKERS[attacks % len(MARKERS)], False
        )
        attacks += 1
    return styles


def _y_top(ratios: Sequence[float]) -> float:
    highest = max(ratios, default=1.0)
    return 1.0 if highest <= 1.0 else math.ceil(highest * 4) / 4


def _resolution_note(evaluations: Sequence[_Evaluation]) -> str:
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


def _panel(
    norm: str, evaluations: Sequence[_Evaluation], styles: Mapping[str, _Style]
) -> dict[str, Any] | None:
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
    y_top = _y_top([e.ratio for e in plotted if e.ratio is not None])

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
    series: dict[str, list[_Evaluation]] = {}
    for evaluation in plotted:
        series.setdefault(evaluation.series_key, []).append(evaluation)
    order = {key: i for i, key in enumerate(styles)}
    lines = []
    for key in sorted(series, key=order.__getitem__):
        style = styles[key]
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
                        f"{label}, {_norm_label(norm)} eps {e.eps_text}: IoU ratio "
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
            }
        )
    legend, height = _PLOT.legend_below(
        lines, gap=58, short_at=_LEGEND_SHORT, max_chars=_LEGEND_CHARS
    )
    title = _norm_label(norm)
    return {
        "norm": norm,
        "title": f"{title} threat model",
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
        "legend": legend,
        "skipped": skipped,
    }


def _panels(ordered: Sequence[_Evaluation], styles: Mapping[str, _Style]) -> list[dict[str, Any]]:
    norms: list[str] = []
    for evaluation in ordered:
        if evaluation.norm is not None and evaluation.norm not in norms:
            norms.append(evaluation.norm)
    panels = []
    for norm in norms:
        panel = _panel(norm, [e for e in ordered if e.norm == norm], styles)
        if panel is not None:
            panels.append(panel)
    return panels


def _passes(entry: Mapping[str, Any]) -> str:
    return f"{fmt_num(entry.get('forward_passes'))} / {fmt_num(entry.get('backward_passes'))}"


def _gradient_notes(entry: Mapping[str, Any]) -> list[str]:
    """Short warnings for images whose input gradient was all zero or non-finite."""
    gradients = mapping(entry.get("gradients"))
    notes = []
    for key, label in (("zero", "all-zero"), ("nonfinite", "non-finite")):
        if finite(gradients.get(key)):
            notes.append(f"{fmt_num(gradients[key])} {label} grad.")
    return notes


_PERTURBATION_STATS = (("linf_max", "linf", "max Linf"), ("l2_mean", "l2", "mean L2"))


def _perturbation(evaluation: _Evaluation) -> tuple[str, str]:
    """The measured perturbation sizes, and a warning when one exceeds the threat model."""
    perturbation = mapping(evaluation.raw.get("perturbation"))
    parts, warning = [], ""
    for key, norm, label in _PERTURBATION_STATS:
        value = finite(perturbation.get(key))
        if value is None:
            continue
        parts.append(f"{label} {fmt_eps(value)}")
        eps = evaluation.eps
        if evaluation.norm == norm and eps is not None and value > eps * (1 + 1e-3) + 1e-6:
            warning = f"{label} {fmt_eps(value)} exceeds epsilon"
    return ("measured " + ", ".join(parts) if parts else "", warning)


def _row(evaluation: _Evaluation, style: _Style, examples_anchor: str | None) -> dict[str, Any]:
    entry = evaluation.raw
    metrics = evaluation.metrics
    noise = mapping(entry.get("noise"))
    perturbation, perturbation_warning = _perturbation(evaluation)
    details = [
        fmt_text(value)
        for value in (entry.get("library"), entry.get("family"))
        if value is not None and value != ""
    ]
    return {
        "id": evaluation.id,
        "label": evaluation.label,
        "details": " · ".join(details),
        "color": style.color,
        "marker": marker_path(style.marker, 7, 7, 4.0),
        "hollow": style.dashed,
        "norm": _norm_label(evaluation.norm),
        "eps_text": evaluation.eps_text,
        "eps_value": fmt_eps(evaluation.eps) if evaluation.eps is not None else NA,
        "perturbation": perturbation,
        "perturbation_warning": perturbation_warning,
        "resolution": fmt_compact_resolution(entry.get("resolution")),
        "num_samples": fmt_num(entry.get("num_samples")),
        "miou": fmt_num(metrics.get("miou")),
        "ratio": fmt_num(evaluation.ratio),
        "pixel_accuracy": fmt_num(metrics.get("pixel_accuracy")),
        "success_rate": fmt_pct(entry.get("success_rate")),
        "noise_miou": fmt_num(noise.get("miou")),
        "passes": _passes(entry),
        "gradients": _gradient_notes(entry),
        "seconds": fmt_duration(entry["seconds"]) if finite(entry.get("seconds")) else NA,
        "claims": evaluation.claims,
        "failed": evaluation.failed,
        "examples_anchor": examples_anchor,
    }


def _diagnostics(results: Mapping[str, Any]) -> dict[str, Any]:
    raw = results.get("diagnostics")
    # the checks the run made, as it recorded them (a later version may check more)
    recorded_checks = mapping(results.get("diagnostic_checks"))
    checks = [{"name": str(k), "description": fmt_text(v)} for k, v in recorded_checks.items()]
    if not isinstance(raw, list) or not (checks or raw):
        return {"recorded": False, "flags": [], "checks": checks}
    items = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            items.append({"check": NA, "where": "", "message": fmt_any(entry)})
            continue
        where = " ".join(
            str(part)
            for part in (entry.get("attack"), entry.get("norm"), entry.get("eps_text"))
            if part not in (None, "")
        )
        message = entry.get("message")
        items.append(
            {
                "check": fmt_text(entry.get("check")),
                "where": where,
                "message": str(message) if message else "no message recorded",
            }
        )
    return {"recorded": True, "flags": items, "checks": checks}


def _example_cells(example: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    clean_acc = fmt_num(example.get("pixel_accuracy_clean"))
    adv_acc = fmt_num(example.get("pixel_accuracy_adv"))
    cells = (
        ("image", "input", f"clean pixel acc. {clean_acc}"),
        ("adversarial", "adversarial input", f"adv. pixel acc. {adv_acc}"),
        ("perturbation", "perturbation", "amplified for display"),
        ("ground_truth", "ground truth", ""),
        ("prediction_clean", "clean prediction", f"pixel acc. {clean_acc}"),
        ("prediction_adv", "adversarial prediction", f"pixel acc. {adv_acc}"),
    )
    return [
        {
            "path": example.get(key),
            "alt": f"{title} of {name}",
            "title": title,
            "caption": note,
            "side": PERTURBATION_SIDE if key == "perturbation" else THUMBNAIL_SIDE,
        }
        for key, title, note in cells
    ]


def _examples(ordered: Sequence[_Evaluation], anchors: Mapping[int, str]) -> list[dict[str, Any]]:
    blocks = []
    for evaluation in ordered:
        if evaluation.index not in anchors:
            continue
        examples = []
        for index, example in enumerate(as_list(evaluation.raw.get("examples"))):
            if not isinstance(example, Mapping):
                continue
            name = str(example.get("name") or f"example {index + 1}")
            examples.append(
                {
                    "name": name,
                    "clean": fmt_num(example.get("pixel_accuracy_clean")),
                    "adv": fmt_num(example.get("pixel_accuracy_adv")),
                    "cells": _example_cells(example, name),
                }
            )
        blocks.append(
            {
                "anchor": anchors[evaluation.index],
                "id": evaluation.id,
                "title": f"{evaluation.label}, {_norm_label(evaluation.norm)} eps "
                f"{evaluation.eps_text}",
                "count": len(examples),
                "open": evaluation.failed,
                "claims": evaluation.claims,
                # The record keeps them worst first.
                "examples": examples[:GALLERY_EXAMPLES],
                "linked": examples[GALLERY_EXAMPLES:],
            }
        )
    return blocks


def _min_norm(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for index, entry in enumerate(as_list(recorded(results, "min_norm"))):
        if not isinstance(entry, Mapping):
            continue
        norm = entry.get("norm")
        norm = norm.lower() if isinstance(norm, str) else None
        image = mapping(entry.get("image_radius"))
        pixel = mapping(entry.get("pixel_radius"))
        quantiles = mapping(pixel.get("quantiles"))
        rows.append(
            {
                "id": str(entry.get("id") or f"min-norm {index + 1}"),
                "attack": fmt_text(entry.get("attack")),
                "norm": _norm_label(norm),
                "num_samples": fmt_num(entry.get("num_samples")),
                "image_median": fmt_radius(image.get("median"), norm),
                "pixel_median": fmt_radius(pixel.get("median"), norm),
                "quantiles": [fmt_radius(quantiles.get(q), norm, short=True) for q in _QUANTILES],
                "finite": fmt_pct(pixel.get("finite_fraction")),
            }
        )
    return rows


def build_attacks(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Context of ``_attacks.html.j2``, or ``None`` when no attack was evaluated."""
    evaluations = _evaluations(results)
    min_norm = _min_norm(results)
    if not evaluations and not min_norm:
        return None
    _attach_claims(results, evaluations)
    ordered = sorted(evaluations, key=_row_order)
    styles = _styles(sorted(evaluations, key=_group_order))
    anchors: dict[int, str] = {}
    for evaluation in ordered:
        if any(isinstance(x, Mapping) for x in as_list(evaluation.raw.get("examples"))):
            anchors[evaluation.index] = f"attack-examples-{len(anchors) + 1}"
    rows = [
        _row(evaluation, styles[evaluation.series_key], anchors.get(evaluation.index))
        for evaluation in ordered
    ]
    clean = {finite(e.raw.get("clean_miou")) for e in evaluations} - {None}
    return {
        "count": len(evaluations),
        "groups": len(styles),
        "clean_miou": fmt_num(next(iter(clean))) if len(clean) == 1 else "",
        "panels": _panels(ordered, styles),
        "rows": rows,
        "noise": any(e.is_noise for e in evaluations),
        "diagnostics": _diagnostics(results),
        "examples": _examples(ordered, anchors),
        "gallery": GALLERY_EXAMPLES,
        "min_norm": min_norm,
        "quantile_labels": [f"q{float(q) * 100:g}" for q in _QUANTILES],
    }

"""The report's "Attacks" section: robustness curves, the evaluation table and diagnostics.

:func:`build_attacks` turns ``results["evaluations"]["attacks"]`` (one entry per attack, norm
and epsilon), ``results["diagnostics"]`` and ``results["evaluations"]["min_norm"]`` into the
context of ``_attacks.html.j2``.  The curves follow Arnab et al., "On the Robustness of Semantic
Segmentation Models to Adversarial Attacks" (CVPR 2018): IoU ratio (adversarial mIoU over
clean mIoU) against epsilon on a log axis, one line per attack, one panel per norm, with the
claims' thresholds and intervals and a baseline run over them
(:mod:`~audit.report.attack_curves`); per-class IoU under the strongest attack of each norm
comes from :mod:`~audit.report.per_class`.  All of it is SVG geometry and tables, so the page
needs no script and no external asset.

Every field may be missing, null or NaN in a partial or older results file; such values read
"n/a" and are left out of the curves, never raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.accessors import as_list, claim_ref, mapping, recorded
from audit.report.attack_curves import (
    NOISE_COLOR,
    Evaluation,
    Style,
    norm_label,
    panels,
    styles,
)
from audit.report.breakdowns import small_object_recall
from audit.report.charts import MARKERS, PALETTE, marker_path
from audit.report.embed import THUMBNAIL_SIDE
from audit.report.format import (
    NA,
    finite,
    fmt_any,
    fmt_compact_resolution,
    fmt_duration,
    fmt_eps,
    fmt_num,
    fmt_pct,
    fmt_radius,
    fmt_text,
)
from audit.report.per_class import per_class_under_attack

# Re-exported: the palette, markers and checks a reader of this section's tests looks up here.
__all__ = ["GALLERY_EXAMPLES", "MARKERS", "NOISE_COLOR", "PALETTE", "build_attacks"]

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
_FAMILY_ORDER = {"single_step": 0, "iterative": 1, "min_norm": 2, "random": 3}
_QUANTILES = ("0.1", "0.25", "0.5", "0.75", "0.9")


def _iou_ratio(entry: Mapping[str, Any]) -> float | None:
    ratio = finite(entry.get("iou_ratio"))
    if ratio is not None:
        return ratio
    miou = finite(mapping(entry.get("metrics")).get("miou"))
    clean = finite(entry.get("clean_miou"))
    if miou is not None and clean is not None and clean > 0:
        return miou / clean
    return None


def _evaluations(results: Mapping[str, Any]) -> list[Evaluation]:
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
            Evaluation(
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


def _attach_claims(results: Mapping[str, Any], evaluations: Sequence[Evaluation]) -> None:
    by_id = {evaluation.id: evaluation for evaluation in evaluations}
    # NB: numbered over the raw list, while the claims table numbers only its mapping
    # entries, so a malformed entry ahead of a claim shifts this link by one.
    for index, claim in enumerate(as_list(results.get("claims"))):
        if not isinstance(claim, Mapping):
            continue
        target = mapping(claim.get("evidence")).get("evaluation")
        if isinstance(target, str) and target in by_id:
            by_id[target].claims.append(claim_ref(index, claim))


def _group_order(evaluation: Evaluation) -> tuple[Any, ...]:
    family = evaluation.raw.get("family")
    return (
        evaluation.is_noise,
        _FAMILY_ORDER.get(family, len(_FAMILY_ORDER)) if isinstance(family, str) else 9,
        evaluation.attack,
        evaluation.params_label,
    )


def _row_order(evaluation: Evaluation) -> tuple[Any, ...]:
    norm = evaluation.norm
    return (
        *_group_order(evaluation),
        _NORM_ORDER.get(norm, len(_NORM_ORDER)) if norm else 9,
        norm or "",
        evaluation.eps is None,
        evaluation.eps or 0.0,
        evaluation.index,
    )


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


def _perturbation(evaluation: Evaluation) -> tuple[str, str]:
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


def _row(evaluation: Evaluation, style: Style, examples_anchor: str | None) -> dict[str, Any]:
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
        "norm": norm_label(evaluation.norm),
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
        "small_recall": small_object_recall(entry),
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
    coverage = mapping(results.get("diagnostic_coverage"))
    # a check with nothing to judge is listed apart: silence from it is not a clean bill
    checks = [
        {
            "name": str(k),
            "description": fmt_text(v),
            "status": str(mapping(coverage.get(k)).get("status") or "not recorded"),
            "reason": fmt_text(mapping(coverage.get(k)).get("reason")),
        }
        for k, v in recorded_checks.items()
    ]
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


def _example_cells(
    example: Mapping[str, Any], name: str, evaluation: Evaluation
) -> list[dict[str, Any]]:
    clean_acc = fmt_num(example.get("pixel_accuracy_clean"))
    adv_acc = fmt_num(example.get("pixel_accuracy_adv"))
    # The alt text names the attack and epsilon: a thumbnail read aloud, or shown when the
    # image does not load, must say which evaluation it belongs to.
    under = f"under {evaluation.label} ({norm_label(evaluation.norm)}) at eps {evaluation.eps_text}"
    cells = (
        ("image", "input", f"clean pixel acc. {clean_acc}", "clean input"),
        ("adversarial", "adversarial input", f"adv. pixel acc. {adv_acc}", under),
        ("perturbation", "perturbation", "amplified for display", under),
        ("ground_truth", "ground truth", "", "labels"),
        ("prediction_clean", "clean prediction", f"pixel acc. {clean_acc}", "no attack"),
        ("prediction_adv", "adversarial prediction", f"pixel acc. {adv_acc}", under),
    )
    return [
        {
            "path": example.get(key),
            "alt": f"{title} of {name}, {context}",
            "title": title,
            "caption": note,
            "side": PERTURBATION_SIDE if key == "perturbation" else THUMBNAIL_SIDE,
        }
        for key, title, note, context in cells
    ]


def _examples(ordered: Sequence[Evaluation], anchors: Mapping[int, str]) -> list[dict[str, Any]]:
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
                    "cells": _example_cells(example, name, evaluation),
                }
            )
        blocks.append(
            {
                "anchor": anchors[evaluation.index],
                "id": evaluation.id,
                "title": f"{evaluation.label}, {norm_label(evaluation.norm)} eps "
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
                "norm": norm_label(norm),
                "num_samples": fmt_num(entry.get("num_samples")),
                "image_median": fmt_radius(image.get("median"), norm),
                "pixel_median": fmt_radius(pixel.get("median"), norm),
                "quantiles": [fmt_radius(quantiles.get(q), norm, short=True) for q in _QUANTILES],
                "finite": fmt_pct(pixel.get("finite_fraction")),
            }
        )
    return rows


def _ensembles(ordered: Sequence[Evaluation]) -> dict[str, Any] | None:
    """Which member of an ensemble (``sea``) found each image's worst case: one row per
    evaluation with the images each member won, and the images by member."""
    rows, members = [], []
    for evaluation in ordered:
        won = evaluation.raw.get("members")
        if not isinstance(won, Mapping) or not won:
            continue
        members += [str(m) for m in won if str(m) not in members]
        by_member: dict[str, list[str]] = {}
        for image, member in mapping(evaluation.raw.get("winners")).items():
            by_member.setdefault(str(member), []).append(str(image))
        rows.append(
            {
                "attack": evaluation.label,
                "norm": norm_label(evaluation.norm),
                "eps_text": evaluation.eps_text,
                "won": {str(m): fmt_num(n) for m, n in won.items()},
                "images": [
                    f"{member}: {', '.join(sorted(images))}"
                    for member, images in sorted(by_member.items())
                ],
            }
        )
    return {"members": members, "rows": rows} if rows else None


def build_attacks(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Context of ``_attacks.html.j2``, or ``None`` when no attack was evaluated."""
    evaluations = _evaluations(results)
    min_norm = _min_norm(results)
    if not evaluations and not min_norm:
        return None
    _attach_claims(results, evaluations)
    ordered = sorted(evaluations, key=_row_order)
    series_styles = styles(sorted(evaluations, key=_group_order))
    anchors: dict[int, str] = {}
    for evaluation in ordered:
        if any(isinstance(x, Mapping) for x in as_list(evaluation.raw.get("examples"))):
            anchors[evaluation.index] = f"attack-examples-{len(anchors) + 1}"
    rows = [
        _row(evaluation, series_styles[evaluation.series_key], anchors.get(evaluation.index))
        for evaluation in ordered
    ]
    clean = {finite(e.raw.get("clean_miou")) for e in evaluations} - {None}
    return {
        "count": len(evaluations),
        "groups": len(series_styles),
        "clean_miou": fmt_num(next(iter(clean))) if len(clean) == 1 else "",
        "panels": panels(ordered, series_styles, results),
        "per_class": per_class_under_attack(results, ordered),
        "rows": rows,
        # the column only where some evaluation recorded it (older records did not)
        "small_objects": any(row["small_recall"] != NA for row in rows),
        "noise": any(e.is_noise for e in evaluations),
        "diagnostics": _diagnostics(results),
        "examples": _examples(ordered, anchors),
        "gallery": GALLERY_EXAMPLES,
        "min_norm": min_norm,
        "ensembles": _ensembles(ordered),
        "quantile_labels": [f"q{float(q) * 100:g}" for q in _QUANTILES],
    }

"""The report's sections: the :class:`Section` type, the ordered registry and the built-ins.

Each builder is a pure function from the results mapping to its partial's context, or ``None``
when the section has nothing to show.  Builders do all the defaulting and number formatting,
so partials only print ready-made strings.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit.errors import ConfigError
from audit.report.attacks import build_attacks
from audit.report.certificates import build_certificates
from audit.report.format import (
    _MISSING,
    _color,
    _css_rgb,
    _is_number,
    fmt_any,
    fmt_duration,
    fmt_interval,
    fmt_interval_method,
    fmt_number,
    fmt_percent,
    fmt_resize,
    fmt_resolution,
    fmt_threshold,
)

#: Beyond this many classes a confusion matrix table stops being readable on a page.
MAX_CONFUSION_CLASSES = 40

SectionBuilder = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Section:
    """One block of the report: ``build(results)`` feeds ``template`` or hides the section."""

    key: str
    title: str
    template: str
    build: SectionBuilder


_STATUS = {
    "passed": ("PASS", "pass"),
    "failed": ("FAIL", "fail"),
    "error": ("ERROR", "error"),
    "incomplete": ("INCOMPLETE", "incomplete"),
    # a record the run never finished: the process was killed, or is still running
    "running": ("DID NOT FINISH", "incomplete"),
}
_VERDICTS = {
    "passed": ("PASS", "pass"),
    "failed": ("FAIL", "fail"),
    "error": ("ERROR", "error"),
    "skipped": ("SKIPPED", "skip"),
    "not_run": ("NOT RUN", "notrun"),
}
# Failures first: they are what a reviewer reads the table for; ties keep suite order.
_VERDICT_ORDER = {"failed": 0, "error": 1, "not_run": 2, "skipped": 3, "passed": 4}
_COUNT_LABELS = (
    ("total", "Claims"),
    ("passed", "Passed"),
    ("failed", "Failed"),
    ("error", "Errors"),
    ("skipped", "Skipped"),
    ("not_run", "Not run"),
)
_METRIC_LABELS = {
    "miou": "mIoU",
    "pixel_accuracy": "Pixel accuracy",
    "mean_class_accuracy": "Mean class accuracy",
}


def fmt_pickle_trust(value: Any) -> str:
    """``off`` or ``ON (from <source>)``: whether the model file was allowed to run code."""
    trust = _mapping(value)
    if "enabled" not in trust:
        return _MISSING
    if trust["enabled"] is not True:
        return "off (pickled code refused)"
    return f"ON (from {fmt_any(trust.get('source'))}): the model file was allowed to run code"


def _status(results: Mapping[str, Any]) -> tuple[str, str]:
    status = results.get("status")
    if status in _STATUS:
        return _STATUS[status]
    if results.get("complete") is not True:
        return _STATUS["incomplete"]
    return (str(status).upper() if status else "UNKNOWN", "unknown")


def _verdict(value: Any) -> tuple[str, str]:
    if value in _VERDICTS:
        return _VERDICTS[value]
    return (str(value).upper() if value else "UNKNOWN", "unknown")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _claims(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    claims = results.get("claims")
    if not isinstance(claims, list):
        return []
    return [claim for claim in claims if isinstance(claim, Mapping)]


def _claim_anchor(index: int) -> str:
    # Node ids are user text; positional anchors are always valid HTML ids.
    return f"claim-{index + 1}"


def _counts(results: Mapping[str, Any]) -> dict[str, int]:
    """The summary block if the writer gave one, else counts recomputed from the claims."""
    summary = _mapping(results.get("summary"))
    claims = _claims(results)
    counts: dict[str, int] = {}
    for key, _ in _COUNT_LABELS:
        if isinstance(summary.get(key), int):
            counts[key] = summary[key]
        elif key == "total":
            counts[key] = len(claims)
        else:
            counts[key] = sum(1 for claim in claims if claim.get("verdict") == key)
    return counts


def _run_errors(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Errors outside any claim (a suite that does not parse, a model that does not load)."""
    errors = results.get("errors")
    if not isinstance(errors, list):
        return []
    return [
        {"where": fmt_any(e.get("where")), "message": fmt_any(e.get("message"))}
        if isinstance(e, Mapping)
        else {"where": "run", "message": fmt_any(e)}
        for e in errors
    ]


def build_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    label, css = _status(results)
    counts = _counts(results)
    attention = [
        {
            "anchor": _claim_anchor(index),
            "nodeid": str(claim.get("nodeid") or claim.get("id") or f"claim {index + 1}"),
            "statement": str(claim.get("statement") or ""),
            "verdict": _verdict(claim.get("verdict"))[0],
            "verdict_css": _verdict(claim.get("verdict"))[1],
        }
        for index, claim in enumerate(_claims(results))
        if claim.get("verdict") in ("failed", "error")
    ]
    provenance = _mapping(results.get("provenance"))
    suites = [
        {
            "name": str(suite.get("name") or _MISSING),
            "description": str(suite.get("description") or ""),
        }
        for suite in results.get("suites") or []
        if isinstance(suite, Mapping)
    ]
    return {
        "badge": label,
        "badge_css": css,
        "run_errors": _run_errors(results),
        "counts": [
            {"key": key, "label": text, "value": counts[key]} for key, text in _COUNT_LABELS
        ],
        "attention": attention,
        "suites": suites,
        "duration": fmt_duration(provenance.get("duration_s")),
        # Shown on the cover: every score below was computed on resized logits.
        "output_resize": _output_resize(_mapping(provenance.get("model"))),
    }


def build_claims(results: Mapping[str, Any]) -> dict[str, Any]:
    rows = []
    for index, claim in enumerate(_claims(results)):
        verdict = claim.get("verdict")
        label, css = _verdict(verdict)
        params = _mapping(claim.get("params"))
        rows.append(
            {
                "anchor": _claim_anchor(index),
                "order": _VERDICT_ORDER.get(verdict, len(_VERDICT_ORDER)),
                "nodeid": str(claim.get("nodeid") or claim.get("id") or f"claim {index + 1}"),
                "kind": str(claim.get("kind") or ""),
                "statement": str(claim.get("statement") or ""),
                "params": ", ".join(f"{k}={fmt_any(v)}" for k, v in params.items()),
                "measured": fmt_number(claim.get("measured")),
                "interval": fmt_interval(claim.get("interval")),
                "interval_method": fmt_interval_method(claim.get("interval")),
                "threshold": fmt_threshold(claim.get("threshold")),
                "verdict": label,
                "verdict_css": css,
                "message": str(claim.get("message") or ""),
                "prominent": verdict != "passed",
                "num_samples": fmt_number(claim.get("num_samples")),
                "duration": fmt_duration(claim.get("duration_s")),
            }
        )
    rows.sort(key=lambda row: row["order"])
    return {"rows": rows}


def _headline_metrics(clean: Mapping[str, Any]) -> list[dict[str, str]]:
    metrics = _mapping(clean.get("metrics"))
    intervals = _mapping(clean.get("intervals"))
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
    supports = [e.get("support") for e in entries if _is_number(e.get("support"))]
    total_support = sum(supports) if supports else 0
    rows = []
    for index, entry in enumerate(entries):
        iou = entry.get("iou")
        support = entry.get("support")
        rgb = _color(entry.get("color"))
        share = support / total_support if _is_number(support) and total_support else None
        rows.append(
            {
                "index": index,
                "name": str(entry.get("name") if entry.get("name") is not None else index),
                "color": _css_rgb(rgb),
                "iou_value": float(iou) if _is_number(iou) and math.isfinite(iou) else None,
                "iou": fmt_number(iou) if iou is not None else "n/a",
                "accuracy": fmt_number(entry.get("accuracy")),
                "support": fmt_number(support),
                "share": fmt_percent(share) + "%" if share is not None else _MISSING,
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
        name = row["name"]
        bars.append(
            {
                "y": top + i * row_h,
                "text_y": top + i * row_h + row_h // 2 + 4,
                "width": round(fraction * bar_w, 2),
                "color": row["color"],
                "label": name if len(name) <= 22 else name[:21] + "…",
                "name": name,
                "value": row["iou"],
            }
        )
    ticks = [{"x": label_w + t * bar_w, "label": f"{t:g}"} for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    miou_x = None
    if _is_number(miou) and math.isfinite(miou):
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
    clean = _mapping(results.get("evaluations")).get("clean")
    if not isinstance(clean, Mapping):
        return None
    per_class = _per_class(clean)
    return {
        "num_samples": fmt_number(clean.get("num_samples")),
        "num_pixels": fmt_number(clean.get("num_pixels")),
        "resolution": fmt_resolution(clean.get("resolution")),
        "aggregation": str(clean.get("aggregation") or ""),
        "metrics": _headline_metrics(clean),
        "per_class": per_class,
        "chart": _iou_chart(per_class, _mapping(clean.get("metrics")).get("miou")),
        "examples": _examples(clean),
    }


def _heat(fraction: float) -> tuple[str, str]:
    """Background and text colour of a confusion cell holding ``fraction`` of its row."""
    alpha = round(0.08 + 0.92 * fraction, 3) if fraction > 0 else 0.0
    background = f"rgba(31, 88, 170, {alpha})"
    return background, ("#fff" if fraction >= 0.5 else "#1b1f24")


def build_confusion(results: Mapping[str, Any]) -> dict[str, Any] | None:
    clean = _mapping(_mapping(results.get("evaluations")).get("clean"))
    matrix = clean.get("confusion_matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    n = len(matrix)
    if any(not isinstance(row, list) or len(row) != n for row in matrix) or not all(
        _is_number(v) for row in matrix for v in row
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
            background, color = _heat(fraction)
            cells.append(
                {
                    "text": fmt_percent(fraction) if total else _MISSING,
                    "background": background,
                    "color": color,
                    "diagonal": i == j,
                    "title": f"truth {names[i]} → predicted {names[j]}: {count:,} pixels",
                }
            )
        rows.append({"index": i, "name": names[i], "total": fmt_number(total), "cells": cells})
    return {"note": "", "n": n, "columns": list(range(n)), "rows": rows}


def _limit(value: Any) -> str:
    return "none (all samples)" if value is None else fmt_any(value)


def _rows(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
    return [{"label": label, "value": value} for label, value in pairs]


def _output_resize(model: Mapping[str, Any]) -> str | None:
    return fmt_resize(
        model.get("input_resolution"), model.get("output_resolution"), model.get("resize_factor")
    )


def _model_output_rows(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the model outputs and how it was resized; absent before the model first ran."""
    rows = []
    if "output_resolution" in model:
        rows.append(("Output resolution", fmt_resolution(model.get("output_resolution"))))
        rows.append(("Resize", _output_resize(model) or "none (logits at the input size)"))
    replaced = _mapping(model.get("embedded_keys_replaced"))
    if replaced:
        rows.append(
            (
                "Ignored audit.json keys",
                ", ".join(f"{k} (replaced by {v})" for k, v in replaced.items()),
            )
        )
    return rows


def build_provenance(results: Mapping[str, Any]) -> dict[str, Any]:
    provenance = _mapping(results.get("provenance"))
    model = _mapping(provenance.get("model"))
    dataset = _mapping(provenance.get("dataset"))
    command = provenance.get("command_line")
    if isinstance(command, list) and all(isinstance(part, str) for part in command):
        command_text = shlex.join(command)
    else:
        command_text = fmt_any(command)
    groups = [
        {
            "title": "Model",
            "rows": _rows(
                [
                    ("Path", fmt_any(model.get("path"))),
                    ("SHA-256", fmt_any(model.get("sha256"))),
                    ("Format", fmt_any(model.get("format"))),
                    ("Pickle trust", fmt_pickle_trust(provenance.get("trust_pickle"))),
                ]
                + [
                    (f"metadata.{key}", fmt_any(value))
                    for key, value in _mapping(model.get("metadata")).items()
                ]
                + _model_output_rows(model)
            ),
        },
        {
            "title": "Dataset",
            "rows": _rows(
                [
                    ("Spec", fmt_any(dataset.get("spec"))),
                    ("Kind", fmt_any(dataset.get("kind"))),
                    ("Fingerprint", fmt_any(dataset.get("fingerprint"))),
                    ("Samples", fmt_any(dataset.get("num_samples"))),
                    ("Resolution", fmt_resolution(dataset.get("resolution"))),
                    ("Ignore index", fmt_any(dataset.get("ignore_index"))),
                    ("Classes", fmt_any(dataset.get("class_names"))),
                ]
                + [
                    (f"describe.{key}", fmt_any(value))
                    for key, value in _mapping(dataset.get("describe")).items()
                ]
            ),
        },
        {
            "title": "Run",
            "rows": _rows(
                [
                    ("Seed", fmt_any(provenance.get("seed"))),
                    ("Device", fmt_any(provenance.get("device"))),
                    ("Batch size", fmt_any(provenance.get("batch_size"))),
                    ("Sample limit", _limit(provenance.get("limit"))),
                    ("Command line", command_text),
                    ("Started", fmt_any(provenance.get("started_at"))),
                    ("Finished", fmt_any(provenance.get("finished_at"))),
                    ("Duration", fmt_duration(provenance.get("duration_s"))),
                    ("Host", fmt_any(provenance.get("hostname"))),
                    ("Schema version", fmt_any(results.get("schema_version"))),
                ]
            ),
        },
        {
            "title": "Versions",
            "rows": _rows(
                (str(name), fmt_any(version))
                for name, version in _mapping(provenance.get("versions")).items()
            ),
        },
    ]
    suites = [
        {
            "name": fmt_any(suite.get("name")),
            "description": fmt_any(suite.get("description")),
            "path": fmt_any(suite.get("path")),
        }
        for suite in results.get("suites") or []
        if isinstance(suite, Mapping)
    ]
    return {"groups": [g for g in groups if g["rows"]], "suites": suites}


_SECTIONS: list[Section] = [
    Section("summary", "Summary", "_summary.html.j2", build_summary),
    Section("claims", "Claims", "_claims.html.j2", build_claims),
    Section("clean", "Clean evaluation", "_clean.html.j2", build_clean),
    Section("confusion", "Confusion matrix", "_confusion.html.j2", build_confusion),
    Section("attacks", "Attacks", "_attacks.html.j2", build_attacks),
    Section("certificates", "Certificates", "_certificates.html.j2", build_certificates),
    Section("provenance", "Provenance", "_provenance.html.j2", build_provenance),
]

_KEY_PATTERN = re.compile(r"[a-z][a-z0-9-]*")


def sections() -> tuple[Section, ...]:
    """The registered sections, in page order."""
    return tuple(_SECTIONS)


def register_section(
    key: str,
    title: str,
    template: str,
    build: SectionBuilder,
    *,
    before: str | None = None,
    after: str | None = None,
) -> Section:
    """Add a section to every report rendered from now on.

    ``template`` names a partial in the templates folder; it sees the builder's result as
    ``ctx`` and may call ``embed_image(path, alt)`` for an image relative to the report folder.
    The section goes at the end unless ``before`` or ``after`` names an existing key; new
    result sections usually belong ``before="provenance"``.
    """
    if not _KEY_PATTERN.fullmatch(key):
        raise ConfigError(
            "a section key must be lower-case letters, digits and dashes (it is an HTML id)",
            source="register_section",
            key=key,
        )
    if any(section.key == key for section in _SECTIONS):
        raise ConfigError("a section with this key is already registered", key=key)
    if before is not None and after is not None:
        raise ConfigError("give at most one of before= and after=", key=key)
    section = Section(key, title, template, build)
    anchor = before if before is not None else after
    if anchor is None:
        _SECTIONS.append(section)
        return section
    keys = [s.key for s in _SECTIONS]
    if anchor not in keys:
        raise ConfigError(f"no section {anchor!r} to place it next to; have {keys}", key=key)
    _SECTIONS.insert(keys.index(anchor) + (0 if before is not None else 1), section)
    return section


def unregister_section(key: str) -> None:
    """Remove a section added with :func:`register_section` (tests, plugins being unloaded)."""
    for index, section in enumerate(_SECTIONS):
        if section.key == key:
            del _SECTIONS[index]
            return
    raise ConfigError("no section with this key is registered", key=key)

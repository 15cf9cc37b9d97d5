"""The report's "Requirements and verdicts" section: the traceability matrix.

One row per claim item, in the order a reviewer works through them (failures first): the
requirement as stated, the method with every parameter and the threat model, the threshold
with where it came from and why, the statistic actually held against it, the measured value
with its interval, the verdict, the change against a baseline run, and links to the evidence.
A PASS that rests on weak evidence says so on its own row: an interval from a handful of
images, an interval that reaches across the threshold, an attack the diagnostics question,
a value conditional on something unproven, a threshold that is a placeholder or was
overridden.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.accessors import (
    as_list,
    claim_anchor,
    claim_name,
    claims,
    evidence_files,
    mapping,
    verdict,
)
from audit.report.format import (
    MISSING,
    finite,
    fmt_any,
    fmt_duration,
    fmt_interval,
    fmt_interval_method,
    fmt_number,
    fmt_params,
    fmt_threshold,
)

# Failures first: they are what a reviewer reads the table for; ties keep suite order.
VERDICT_ORDER = {"failed": 0, "error": 1, "not_run": 2, "skipped": 3, "passed": 4}
#: fewer images than this make a bootstrap interval little more than a guess
FEW_IMAGES = 10
#: the section each claim kind's evidence is drawn in
EVIDENCE_SECTION = {
    "clean": ("clean", "Clean evaluation"),
    "attack": ("attacks", "Attacks"),
    "min_norm": ("attacks", "Attacks"),
    "certified": ("certificates", "Certificates"),
    "lipschitz": ("certificates", "Certificates"),
    "certificate_soundness": ("certificates", "Certificates"),
    "corruption": ("corruptions", "Corruptions"),
}
STATISTIC_LABELS = {
    "estimate": "estimate",
    "ci_lower": "lower end of the interval",
    "ci_upper": "upper end of the interval",
}
#: the terms a claim's method is described by, shown first and in this order
_THREAT_KEYS = ("attack", "certifier", "norm", "eps", "radius")
JOINT_BUDGET = (
    "joint budget: each image gets one perturbation within the radius, which must pay for "
    "every pixel it flips; not each pixel's own worst case"
)
SMOOTHED = (
    "randomized smoothing: each non-abstaining pixel is certified at the radius with the "
    "stated confidence, for the smoothed model, not the model itself"
)


def threshold_origin(claim: Mapping[str, Any]) -> dict[str, str]:
    """Where the threshold came from, as a short label and a sentence (``note``)."""
    source = mapping(claim.get("threshold_source"))
    origin = source.get("origin")
    if origin == "override":
        replaced = fmt_threshold(source.get("replaced"))
        return {
            "label": "overridden",
            "css": "override",
            "note": f"set by {fmt_any(source.get('where'))}; the suite said {replaced}",
        }
    if origin == "built-in suite":
        return {
            "label": "placeholder",
            "css": "placeholder",
            "note": "a built-in suite's example value, not a requirement: state your own",
        }
    if origin == "kind default":
        return {"label": "default", "css": "default", "note": "the claim kind's default"}
    if origin == "suite":
        return {"label": "suite", "css": "suite", "note": ""}
    return {"label": "not recorded", "css": "unknown", "note": ""}


def claim_diagnostics(
    claim: Mapping[str, Any], diagnostics: Sequence[Any]
) -> list[Mapping[str, Any]]:
    """The diagnostic findings about the evaluation a claim's value comes from."""
    evaluation = mapping(claim.get("evidence")).get("evaluation")
    if not isinstance(evaluation, str):
        return []
    return [
        finding
        for finding in diagnostics
        if isinstance(finding, Mapping)
        and (
            evaluation in as_list(finding.get("evaluations"))
            or finding.get("evaluation") == evaluation
        )
    ]


def evidence_warnings(claim: Mapping[str, Any], diagnostics: Sequence[Any] = ()) -> list[str]:
    """Why a claim's evidence is weaker than its verdict reads."""
    warnings = []
    interval = mapping(claim.get("interval"))
    low, high = finite(interval.get("low")), finite(interval.get("high"))
    count = claim.get("num_samples")
    if low is not None and isinstance(count, int) and count < FEW_IMAGES:
        warnings.append(f"interval from {count} image(s): the bootstrap says little with so few")
    threshold = mapping(claim.get("threshold"))
    floor, ceiling = finite(threshold.get("min")), finite(threshold.get("max"))
    crosses = (floor is not None and low is not None and low < floor) or (
        ceiling is not None and high is not None and high > ceiling
    )
    passed = claim.get("verdict") == "passed"
    if passed and crosses:
        warnings.append("passed on the estimate, but its interval crosses the threshold")
    for finding in claim_diagnostics(claim, diagnostics):
        warnings.append(
            f"diagnostic {fmt_any(finding.get('check'))}: {fmt_any(finding.get('message'))}"
        )
    if isinstance(claim.get("unproven"), str) and claim["unproven"]:
        warnings.append(f"conditional on {claim['unproven']}")
    return warnings


def method(claim: Mapping[str, Any]) -> dict[str, str]:
    """The claim's method: the threat model first, then every other parameter."""
    params = mapping(claim.get("params"))
    threat = [f"{key}={fmt_any(params[key])}" for key in _THREAT_KEYS if key in params]
    rest = {
        k: v
        for k, v in params.items()
        if k not in _THREAT_KEYS and k != "metric" and v not in ({}, [], "")
    }
    kind = claim.get("kind")
    note = ""
    if not threat and kind == "clean":
        threat = ["none (clean images)"]
    if kind == "certified":
        note = SMOOTHED if params.get("certifier") == "smoothing" else JOINT_BUDGET
    return {
        "threat": ", ".join(threat)
        if threat
        else ("none (clean images)" if kind == "clean" else ""),
        "params": fmt_params(rest),
        "condition": fmt_any(claim.get("condition")) if claim.get("condition") else "",
        "note": note,
    }


def compared(claim: Mapping[str, Any]) -> str:
    statistic = claim.get("statistic")
    label = STATISTIC_LABELS.get(statistic, fmt_any(statistic)) if statistic else MISSING
    value = claim.get("compared")
    if statistic == "estimate" or finite(value) is None:
        return label
    return f"{label}: {fmt_number(value)}"


def baseline_delta(claim: Mapping[str, Any]) -> dict[str, str] | None:
    """This claim against the baseline run, or ``None`` when the run had no baseline."""
    row = claim.get("baseline")
    if not isinstance(row, Mapping):
        return None
    status = str(row.get("status") or "")
    delta = finite(row.get("delta"))
    text = MISSING if delta is None else f"{delta:+.4g}"
    return {"text": text, "status": status.replace("_", " "), "css": status.replace("_", "-")}


def evidence_links(claim: Mapping[str, Any]) -> list[dict[str, Any]]:
    section = EVIDENCE_SECTION.get(str(claim.get("kind")))
    links = []
    if section is not None:
        # "section": the template links it only where that section was rendered
        links.append(
            {"label": section[1], "href": f"#{section[0]}", "path": None, "section": section[0]}
        )
    for item in evidence_files(mapping(claim.get("evidence")).get("files")):
        links.append(
            {"label": item["label"], "href": item["href"], "path": item["path"], "section": None}
        )
    return links


def build_claims(results: Mapping[str, Any]) -> dict[str, Any]:
    diagnostics = as_list(results.get("diagnostics"))
    rows = []
    for index, claim in enumerate(claims(results)):
        value = claim.get("verdict")
        label, css = verdict(value)
        threshold = claim.get("threshold")
        rows.append(
            {
                "anchor": claim_anchor(index),
                "order": VERDICT_ORDER.get(value, len(VERDICT_ORDER)),
                "nodeid": claim_name(index, claim),
                "kind": str(claim.get("kind") or ""),
                "statement": str(claim.get("statement") or ""),
                "method": method(claim),
                "measured": fmt_number(claim.get("measured")),
                "interval": fmt_interval(claim.get("interval")),
                "interval_method": fmt_interval_method(claim.get("interval")),
                "threshold": fmt_threshold(threshold),
                "origin": threshold_origin(claim),
                "rationale": str(claim.get("rationale") or ""),
                "compared": compared(claim),
                "baseline": baseline_delta(claim),
                "verdict": label,
                "verdict_css": css,
                "message": str(claim.get("message") or ""),
                "prominent": value != "passed",
                "num_samples": fmt_number(claim.get("num_samples")),
                "duration": fmt_duration(claim.get("duration_s")),
                "warnings": evidence_warnings(claim, diagnostics),
                "evidence": evidence_links(claim),
            }
        )
    rows.sort(key=lambda row: row["order"])
    return {
        "rows": rows,
        "has_baseline": any(row["baseline"] is not None for row in rows),
        "overridden": sum(1 for row in rows if row["origin"]["css"] == "override"),
        "placeholders": sum(1 for row in rows if row["origin"]["css"] == "placeholder"),
        "with_rationale": sum(1 for row in rows if row["rationale"]),
    }

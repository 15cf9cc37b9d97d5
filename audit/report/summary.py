"""The report's cover ("Summary") and its claims table ("Claims")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import (
    COUNT_LABELS,
    claim_anchor,
    claim_name,
    claims,
    counts,
    mapping,
    output_resize,
    run_errors,
    status,
    suites,
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
    fmt_threshold,
)

# Failures first: they are what a reviewer reads the table for; ties keep suite order.
_VERDICT_ORDER = {"failed": 0, "error": 1, "not_run": 2, "skipped": 3, "passed": 4}


def build_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    label, css = status(results)
    totals = counts(results)
    attention = [
        {
            "anchor": claim_anchor(index),
            "nodeid": claim_name(index, claim),
            "statement": str(claim.get("statement") or ""),
            "verdict": verdict(claim.get("verdict"))[0],
            "verdict_css": verdict(claim.get("verdict"))[1],
        }
        for index, claim in enumerate(claims(results))
        if claim.get("verdict") in ("failed", "error")
    ]
    provenance = mapping(results.get("provenance"))
    cover_suites = [
        {
            "name": str(suite.get("name") or MISSING),
            "description": str(suite.get("description") or ""),
        }
        for suite in suites(results)
    ]
    return {
        "badge": label,
        "badge_css": css,
        "run_errors": run_errors(results),
        "counts": [{"key": key, "label": text, "value": totals[key]} for key, text in COUNT_LABELS],
        "attention": attention,
        "suites": cover_suites,
        "duration": fmt_duration(provenance.get("duration_s")),
        # Shown on the cover: every score below was computed on resized logits.
        "output_resize": output_resize(mapping(provenance.get("model"))),
    }


def build_claims(results: Mapping[str, Any]) -> dict[str, Any]:
    rows = []
    for index, claim in enumerate(claims(results)):
        value = claim.get("verdict")
        label, css = verdict(value)
        params = mapping(claim.get("params"))
        rows.append(
            {
                "anchor": claim_anchor(index),
                "order": _VERDICT_ORDER.get(value, len(_VERDICT_ORDER)),
                "nodeid": claim_name(index, claim),
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
                "prominent": value != "passed",
                "num_samples": fmt_number(claim.get("num_samples")),
                "duration": fmt_duration(claim.get("duration_s")),
                "warnings": evidence_warnings(claim),
            }
        )
    rows.sort(key=lambda row: row["order"])
    return {"rows": rows}


#: fewer images than this make a bootstrap interval little more than a guess
FEW_IMAGES = 10


def evidence_warnings(claim: Mapping[str, Any]) -> list[str]:
    """Why a claim's evidence is weaker than its verdict reads: an interval from a handful
    of images, or a PASS whose interval reaches across the threshold."""
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
    if claim.get("verdict") == "passed" and crosses:
        warnings.append("passed on the estimate, but its interval crosses the threshold")
    return warnings

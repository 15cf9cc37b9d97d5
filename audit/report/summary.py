"""The report's cover ("Summary"): the headline verdict, the counts, what to read with care,
the claims needing attention and the evidence manifest's hash."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import (
    COUNT_LABELS,
    as_list,
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
    fmt_duration,
)
from audit.report.requirements import evidence_warnings, threshold_origin
from audit.report.signoff import headline, manifest_summary


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
    listed = claims(results)
    diagnostics = as_list(results.get("diagnostics"))
    care = [
        (sum(1 for c in listed if c.get("verdict") == "passed"
             and evidence_warnings(c, diagnostics)), "passed claim(s) rest on weak evidence"),
        (len(diagnostics), "diagnostic(s) question the attacks' strength"),
        (sum(1 for c in listed if threshold_origin(c)["css"] == "override"),
         "threshold(s) overridden for this run"),
        (sum(1 for c in listed if threshold_origin(c)["css"] == "placeholder"),
         "threshold(s) are built-in placeholders, not requirements"),
    ]  # fmt: skip
    return {
        "headline": headline(results),
        "read_with_care": [f"{n} {text}" for n, text in care if n],
        "manifest": manifest_summary(results),
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

"""The report's "Incidents and deviations" section: everything a reviewer must not miss.

Failed claims with their counterexamples, errored, skipped and not-run claims, errors outside
any claim, the attack diagnostics with the claims whose values they question (passes
included: a diagnostic on a PASS is a warning on that PASS, not a footnote), passes resting
on weak evidence or on something unproven, and deviations from the plan: thresholds
overridden, a sample limit, a run stopped early, trusted pickles, changed inputs and
regressions against a baseline.
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
    run_errors,
    verdict,
)
from audit.report.format import fmt_any
from audit.report.requirements import evidence_warnings, threshold_origin

_LISTED = {"failed": "Failed claims", "error": "Claims that ended in an error",
           "not_run": "Claims that did not run", "skipped": "Skipped claims"}  # fmt: skip


def _ref(index: int, claim: Mapping[str, Any]) -> dict[str, Any]:
    label, css = verdict(claim.get("verdict"))
    return {
        "anchor": claim_anchor(index),
        "nodeid": claim_name(index, claim),
        "verdict": label,
        "verdict_css": css,
        "message": str(claim.get("message") or ""),
        "files": evidence_files(mapping(claim.get("evidence")).get("files")),
    }


def _by_verdict(listed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups = []
    for value, title in _LISTED.items():
        items = [_ref(i, c) for i, c in enumerate(listed) if c.get("verdict") == value]
        if items:
            groups.append({"key": value, "title": title, "claims": items})
    return groups


def _diagnostics(results: Mapping[str, Any], listed: Sequence[Mapping[str, Any]]) -> list[dict]:
    out = []
    for finding in as_list(results.get("diagnostics")):
        finding = mapping(finding)
        evaluations = set(as_list(finding.get("evaluations"))) | {finding.get("evaluation")}
        affected = [
            _ref(i, c)
            for i, c in enumerate(listed)
            if mapping(c.get("evidence")).get("evaluation") in evaluations
        ]
        out.append(
            {
                "check": fmt_any(finding.get("check")),
                "attack": fmt_any(finding.get("attack")),
                "where": f"{fmt_any(finding.get('norm'))} eps="
                + ", ".join(
                    str(e) for e in as_list(finding.get("eps_texts")) or [finding.get("eps_text")]
                ),
                "message": fmt_any(finding.get("message")),
                "affected": affected,
                "passes_affected": sum(1 for a in affected if a["verdict"] == "PASS"),
            }
        )
    return out


def _weak_passes(results: Mapping[str, Any], listed: Sequence[Mapping[str, Any]]) -> list[dict]:
    diagnostics = as_list(results.get("diagnostics"))
    out = []
    for index, claim in enumerate(listed):
        if claim.get("verdict") != "passed":
            continue
        warnings = evidence_warnings(claim, diagnostics)
        if warnings:
            out.append({**_ref(index, claim), "warnings": warnings})
    return out


def _deviations(results: Mapping[str, Any], listed: Sequence[Mapping[str, Any]]) -> list[str]:
    provenance = mapping(results.get("provenance"))
    dataset = mapping(provenance.get("dataset"))
    out = []
    if results.get("complete") is not True:
        reason = results.get("reason") or "the run did not complete"
        out.append(f"The run is incomplete: {reason}.")
    if provenance.get("selection"):
        out.append(f"Only some claims were selected: {fmt_any(provenance['selection'])}.")
    limit = provenance.get("limit")
    if limit is not None:
        available = dataset.get("available_samples")
        of = f" of the {available} available" if isinstance(available, int) else ""
        out.append(f"A sample limit was set: {fmt_any(limit)} images{of} were audited.")
    for index, claim in enumerate(listed):
        origin = threshold_origin(claim)
        if origin["css"] == "override":
            out.append(f"Threshold of {claim_name(index, claim)} overridden: {origin['note']}.")
    for retry in map(mapping, as_list(provenance.get("memory_retries"))):
        sizes = ", ".join(fmt_any(s) for s in as_list(retry.get("batch_sizes")))
        out.append(
            f"{fmt_any(retry.get('evaluation'))} ran out of device memory and was retried "
            f"with smaller batches (batch sizes {sizes})."
        )
    if mapping(provenance.get("trust_pickle")).get("enabled") is True:
        out.append("Pickle trust was on: the model file was allowed to run code when loaded.")
    baseline = mapping(results.get("baseline"))
    for change in as_list(baseline.get("input_changes")):
        change = mapping(change)
        out.append(
            f"Against the baseline, {fmt_any(change.get('input'))} changed "
            f"({fmt_any(change.get('old'))} to {fmt_any(change.get('new'))}): "
            f"{fmt_any(change.get('note'))}."
        )
    regressed = [
        c for c in as_list(baseline.get("claims")) if mapping(c).get("status") == "regressed"
    ]
    if regressed:
        names = ", ".join(fmt_any(mapping(c).get("nodeid")) for c in regressed)
        out.append(f"{len(regressed)} claim(s) regressed against the baseline: {names}.")
    return out


def build_incidents(results: Mapping[str, Any]) -> dict[str, Any]:
    listed = claims(results)
    groups = _by_verdict(listed)
    diagnostics = _diagnostics(results, listed)
    weak = _weak_passes(results, listed)
    deviations = _deviations(results, listed)
    errors = run_errors(results)
    return {
        "groups": groups,
        "run_errors": errors,
        "diagnostics": diagnostics,
        "weak_passes": weak,
        "deviations": deviations,
        "none": not (groups or errors or diagnostics or weak or deviations),
    }

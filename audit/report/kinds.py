"""The report's "Results by claim kind" section: one row per kind of claim, with its verdict
counts, the claim closest to (or furthest past) its threshold, and where its evidence is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import claim_anchor, claim_name, claims, mapping, verdict
from audit.report.format import finite, fmt_number, fmt_threshold
from audit.report.requirements import EVIDENCE_SECTION

KIND_TITLES = {
    "clean": "Accuracy on clean images",
    "attack": "Robustness under adversarial attack",
    "min_norm": "Minimal perturbation needed",
    "certified": "Certified robustness",
    "lipschitz": "Lipschitz constant",
    "certificate_soundness": "Certificates checked against attacks",
    "corruption": "Accuracy under common corruptions",
    "corruption_search": "Worst case over a corruption family (search)",
    "invariance": "Predictions invariant inside a norm ball (search)",
}


def margin(claim: Mapping[str, Any]) -> float | None:
    """How far the compared value is inside its threshold (negative: outside)."""
    value = finite(claim.get("compared"))
    threshold = mapping(claim.get("threshold"))
    if value is None:
        return None
    gaps = [value - low for low in [finite(threshold.get("min"))] if low is not None]
    gaps += [high - value for high in [finite(threshold.get("max"))] if high is not None]
    return min(gaps) if gaps else None


def build_kinds(results: Mapping[str, Any]) -> dict[str, Any] | None:
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for index, claim in enumerate(claims(results)):
        groups.setdefault(str(claim.get("kind") or "unknown"), []).append((index, claim))
    if not groups:
        return None
    rows = []
    for kind, members in groups.items():
        tally: dict[str, int] = {}
        for _, claim in members:
            label = verdict(claim.get("verdict"))[0]
            tally[label] = tally.get(label, 0) + 1
        measured = [(m, i, c) for i, c in members if (m := margin(c)) is not None]
        closest = None
        if measured:
            m, index, claim = min(measured, key=lambda item: item[0])
            closest = {
                "anchor": claim_anchor(index),
                "nodeid": claim_name(index, claim),
                "measured": fmt_number(claim.get("compared")),
                "threshold": fmt_threshold(claim.get("threshold")),
                "margin": f"{m:+.4g}",
            }
        section = EVIDENCE_SECTION.get(kind)
        rows.append(
            {
                "kind": kind,
                "title": KIND_TITLES.get(kind, kind),
                "total": len(members),
                "tally": ", ".join(f"{n} {label}" for label, n in tally.items()),
                "closest": closest,
                "section": {"key": section[0], "label": section[1]} if section else None,
            }
        )
    return {"rows": rows}

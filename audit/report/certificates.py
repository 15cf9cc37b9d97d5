"""The report's "Certificates" section: L's provenance, certified accuracy, radius maps, soundness.

:func:`build_certificates` turns ``results["evaluations"]["certificates"]`` (Lipschitz and
randomized-smoothing certifications), ``results["evaluations"]["soundness"]`` (certificates
attacked) and the claims of kinds ``certified``, ``certificate_soundness`` and ``lipschitz``
into the context of ``_certificates.html.j2``.  The parts live by job:
:mod:`~audit.report.lipschitz` (where each constant L comes from),
:mod:`~audit.report.certified` (the certifications' table, curves and radius maps) and
:mod:`~audit.report.soundness` (certificates attacked: a point below the scatter's diagonal
is a certificate beaten).

Charts use the Attacks section's palette, markers and tick placement
(:mod:`~audit.report.charts`).  Every field may be missing, null or NaN in a partial or older
results file; such values read "n/a" and are left out of the charts, never raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import as_list, indexed_claims, mapping, of_kind, recorded
from audit.report.certified import (
    certified_curves,
    claim_radii,
    lipschitz_entry,
    radius_maps,
    smoothing_entry,
)
from audit.report.charts import PALETTE, VIRIDIS_STOPS
from audit.report.format import fmt_eps
from audit.report.lipschitz import LipschitzSources, lipschitz_claim_rows
from audit.report.overlays import baseline_values
from audit.report.soundness import (
    MAX_SCATTER_POINTS,
    VIOLATION_COLOR,
    soundness_blocks,
    soundness_records,
)

# Re-exported: the constants a reader of this section's tests looks up here.
__all__ = ["MAX_SCATTER_POINTS", "VIOLATION_COLOR", "VIRIDIS_STOPS", "build_certificates"]

#: radii shown in the table when no certified claim names any
_DEFAULT_TABLE_RADII = (0.05, 0.1, 0.17)
_CLAIM_KINDS = ("certified", "certificate_soundness", "lipschitz")


def build_certificates(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Context of ``_certificates.html.j2``, or ``None`` when nothing was certified."""
    entries = [
        entry for entry in as_list(recorded(results, "certificates")) if isinstance(entry, Mapping)
    ]
    claims = indexed_claims(results, _CLAIM_KINDS)
    records = soundness_records(results, claims)
    claims_with_evidence = [c for _, c in claims if mapping(c.get("evidence"))]
    if not entries and not records and not claims_with_evidence:
        return None
    radii = claim_radii(claims)
    table_radii = radii or list(_DEFAULT_TABLE_RADII)
    sources = LipschitzSources()
    lipschitz: list[dict[str, Any]] = []
    smoothing: list[dict[str, Any]] = []
    others = 0
    for index, entry in enumerate(entries):
        color = PALETTE[(len(lipschitz) + len(smoothing)) % len(PALETTE)]
        if entry.get("certifier") == "smoothing":
            smoothing.append(smoothing_entry(index, entry, color, claims, table_radii))
        elif entry.get("certifier") == "lipschitz" or entry.get("lipschitz") is not None:
            lipschitz.append(lipschitz_entry(index, entry, color, sources, claims, table_radii))
        else:
            others += 1
    # Constants named only by certified claims (no certification recorded with them).
    for _, claim in of_kind(claims, "certified"):
        evidence = mapping(claim.get("evidence"))
        if evidence.get("lipschitz") is not None:
            nodeid = str(claim.get("nodeid") or claim.get("id") or "claim")
            sources.add(evidence["lipschitz"], f"claim {nodeid}")
    lipschitz_claims = lipschitz_claim_rows(claims, sources)
    soundness = soundness_blocks(records, sources)
    rows = [
        {k: v for k, v in cert.items() if k not in ("raw", "pa_points", "fraction_points", "marks")}
        for cert in lipschitz + smoothing
    ]
    beaten = [block for block in soundness if block["violated"]]
    return {
        "count": len(rows),
        "lipschitz_count": len(lipschitz),
        "smoothing_count": len(smoothing),
        "others": others,
        "sources": sources.context(),
        "lipschitz_claims": lipschitz_claims,
        "chart": certified_curves(lipschitz, smoothing, radii, baseline_values(results)),
        "table_radii": [fmt_eps(r) for r in table_radii],
        "table_radii_from_claims": bool(radii),
        "rows": rows,
        "maps": radius_maps(lipschitz),
        "soundness": soundness,
        "beaten": [{"anchor": b["anchor"], "title": b["title"]} for b in beaten],
    }

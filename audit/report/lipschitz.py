"""Where a Lipschitz constant L comes from, for the Certificates section.

A Lipschitz certificate is only as good as its constant, so the section first lists every
distinct constant the record uses (computed from the weights, or claimed and tested), its
per-layer bounds and who used it, then the ``lipschitz`` claims that bound it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.accessors import (
    IndexedClaim,
    as_list,
    claim_ref_measured,
    evidence_files,
    mapping,
    of_kind,
    same_value,
)
from audit.report.format import NA, finite, fmt_sig, fmt_text

_KINDS = {
    "computed": ("computed upper bound", "pass", "proven from the weights"),
    "claimed": ("claimed, tested", "warn", "a hypothesis the falsification search did not break"),
}
#: a claimed constant the search refuted: never described as "not broken"
_BROKEN = ("claimed, REFUTED", "fail")


def _refuted(item: dict[str, Any], lower: float) -> None:
    item["kind"], item["kind_css"] = _BROKEN
    item["meaning"] = (
        f"false: the falsification search found two inputs whose outputs differ by "
        f"{fmt_sig(lower, 6)} times their distance, more than the claimed constant"
    )


def _layers(bound: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for index, layer in enumerate(as_list(bound.get("layers"))):
        if not isinstance(layer, Mapping):
            continue
        rows.append(
            {
                "index": str(index + 1),
                "name": fmt_text(layer.get("name")),
                "kind": fmt_text(layer.get("kind")),
                "bound": fmt_sig(layer.get("bound"), 6),
                "method": fmt_text(layer.get("method")),
            }
        )
    return rows


class LipschitzSources:
    """Distinct Lipschitz constants, keyed by value and kind, with who used each."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, raw: Any, used_by: str) -> dict[str, Any] | None:
        """Record that ``used_by`` relies on the constant ``raw``; its entry, or ``None``."""
        lipschitz = mapping(raw)
        bound = mapping(lipschitz.get("bound"))
        value = finite(lipschitz.get("value"))
        if value is None:
            value = finite(bound.get("value"))
        if value is None and not lipschitz:
            return None
        kind = lipschitz.get("kind") if isinstance(lipschitz.get("kind"), str) else None
        if kind is None and bound:
            kind = "computed"
        for item in self.items:
            same = (
                item["value_raw"] is not None
                and value is not None
                and same_value(item["value_raw"], value)
            ) or (item["value_raw"] is None and value is None)
            if same and item["kind_raw"] == kind:
                if used_by not in item["used_by"]:
                    item["used_by"].append(used_by)
                return item
        label, css, meaning = _KINDS.get(kind or "", (fmt_text(kind), "unknown", ""))
        lower = finite(lipschitz.get("lower_bound"))
        item = {
            "value_raw": value,
            "kind_raw": kind,
            "value": fmt_sig(value, 6),
            "kind": label,
            "kind_css": css,
            "meaning": meaning,
            "description": fmt_text(lipschitz.get("description")),
            "method": fmt_text(bound.get("method")) if bound else NA,
            "bound_value": fmt_sig(bound.get("value"), 6) if bound else NA,
            "lower_bound": fmt_sig(lower, 6) if lower is not None else "",
            "lower_below": lower is None or value is None or lower <= value * (1 + 1e-3),
            "layers": _layers(bound),
            "used_by": [used_by],
        }
        if kind == "claimed" and not item["lower_below"] and lower is not None:
            _refuted(item, lower)
        self.items.append(item)
        return item

    def refute(self, value: float, lower: float) -> None:
        """A ``lipschitz`` claim's search broke the claimed constant ``value``."""
        for item in self.items:
            raw = item["value_raw"]
            if item["kind_raw"] == "claimed" and raw is not None and same_value(raw, value):
                item["lower_bound"] = fmt_sig(lower, 6)
                item["lower_below"] = False
                _refuted(item, lower)

    def context(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in item.items() if not k.endswith("_raw")} for item in self.items]


def lipschitz_claim_rows(
    claims: Sequence[IndexedClaim], sources: LipschitzSources
) -> list[dict[str, Any]]:
    """One row per ``lipschitz`` claim; a computed bound in its evidence joins ``sources``."""
    rows = []
    for index, claim in of_kind(claims, "lipschitz"):
        evidence = mapping(claim.get("evidence"))
        bound = mapping(evidence.get("bound"))
        ref = claim_ref_measured(index, claim)
        if bound:
            sources.add(
                {"value": bound.get("value"), "kind": "computed", "bound": bound},
                f"claim {ref['nodeid']}",
            )
        claimed = finite(mapping(claim.get("threshold")).get("max"))
        lower = finite(evidence.get("lower_bound"))
        falsified = lower is not None and claimed is not None and lower > claimed
        if falsified:
            sources.refute(claimed, lower)  # type: ignore[arg-type]
        rows.append(
            {
                **ref,
                "claimed": fmt_sig(claimed, 6),
                "bound": fmt_sig(bound.get("value") if bound else claim.get("measured"), 6),
                "lower_bound": fmt_sig(lower, 6),
                "lower_method": fmt_text(evidence.get("lower_bound_method")),
                "falsified": falsified,
                "message": str(claim.get("message") or ""),
                "files": evidence_files(evidence.get("files")),
            }
        )
    return rows

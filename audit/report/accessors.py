"""Reading ``results.json`` for the report: tolerant accessors and the verdict and status labels.

A results file may be partial, older or hand-edited, so every accessor here takes whatever is
recorded and returns the expected shape (an empty mapping or list when the value is missing or
of the wrong type); the section builders read the record through these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.format import MISSING, fmt_any, fmt_href, fmt_num, fmt_resize
from audit.threat import parse_epsilon

#: The run's status as the cover badge shows it: (label, CSS class).
STATUS = {
    "passed": ("PASS", "pass"),
    "failed": ("FAIL", "fail"),
    "error": ("ERROR", "error"),
    "incomplete": ("INCOMPLETE", "incomplete"),
    # a record the run never finished: the process was killed, or is still running
    "running": ("DID NOT FINISH", "incomplete"),
}
#: A claim's verdict as the claims table and the sections linking to it show it.
VERDICTS = {
    "passed": ("PASS", "pass"),
    "failed": ("FAIL", "fail"),
    "error": ("ERROR", "error"),
    "skipped": ("SKIPPED", "skip"),
    "not_run": ("NOT RUN", "notrun"),
}
UNKNOWN_VERDICT = ("UNKNOWN", "unknown")
#: The summary's claim counts, in display order, with their labels.
COUNT_LABELS = (
    ("total", "Claims"),
    ("passed", "Passed"),
    ("failed", "Failed"),
    ("error", "Errors"),
    ("skipped", "Skipped"),
    ("not_run", "Not run"),
)


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def recorded(results: Mapping[str, Any], key: str) -> Any:
    """``results["evaluations"][key]`` as recorded, or ``None``."""
    return mapping(results.get("evaluations")).get(key)


def status(results: Mapping[str, Any]) -> tuple[str, str]:
    """The run's badge: (label, CSS class); a record not marked complete is incomplete."""
    value = results.get("status")
    if value in STATUS:
        return STATUS[value]
    if results.get("complete") is not True:
        return STATUS["incomplete"]
    return (str(value).upper() if value else "UNKNOWN", "unknown")


def verdict(value: Any) -> tuple[str, str]:
    """A verdict's (label, CSS class); an unknown one is shown upper-cased as recorded."""
    if value in VERDICTS:
        return VERDICTS[value]
    return (str(value).upper() if value else "UNKNOWN", "unknown")


def claims(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The recorded claims that are mappings, in suite order (the claims table's order)."""
    return [claim for claim in as_list(results.get("claims")) if isinstance(claim, Mapping)]


#: A claim with its position among :func:`claims` (its anchor number in the claims table).
IndexedClaim = tuple[int, Mapping[str, Any]]


def indexed_claims(results: Mapping[str, Any], kinds: tuple[str, ...]) -> list[IndexedClaim]:
    """Claims of ``kinds`` with their position in :func:`claims` (their anchor number)."""
    return [
        (index, claim) for index, claim in enumerate(claims(results)) if claim.get("kind") in kinds
    ]


def of_kind(indexed: Sequence[IndexedClaim], kind: str) -> list[IndexedClaim]:
    """The claims of one ``kind`` among ``indexed``, positions kept."""
    return [(index, claim) for index, claim in indexed if claim.get("kind") == kind]


def claim_anchor(index: int) -> str:
    # Node ids are user text; positional anchors are always valid HTML ids.
    return f"claim-{index + 1}"


def claim_name(index: int, claim: Mapping[str, Any]) -> str:
    """The claim's pytest node id, else its id, else its position."""
    return str(claim.get("nodeid") or claim.get("id") or f"claim {index + 1}")


def claim_ref(index: int, claim: Mapping[str, Any]) -> dict[str, str]:
    """A link to claim ``index`` of the claims table, with its verdict, for other sections."""
    value = claim.get("verdict")
    label, css = VERDICTS.get(value, UNKNOWN_VERDICT) if isinstance(value, str) else UNKNOWN_VERDICT
    return {
        "anchor": claim_anchor(index),
        "nodeid": claim_name(index, claim),
        "verdict": label,
        "verdict_css": css,
    }


def claim_ref_measured(index: int, claim: Mapping[str, Any]) -> dict[str, str]:
    """:func:`claim_ref` plus the claim's measured value."""
    return {**claim_ref(index, claim), "measured": fmt_num(claim.get("measured"))}


def counts(results: Mapping[str, Any]) -> dict[str, int]:
    """The summary block if the writer gave one, else counts recomputed from the claims."""
    summary = mapping(results.get("summary"))
    listed = claims(results)
    out: dict[str, int] = {}
    for key, _ in COUNT_LABELS:
        if isinstance(summary.get(key), int):
            out[key] = summary[key]
        elif key == "total":
            out[key] = len(listed)
        else:
            out[key] = sum(1 for claim in listed if claim.get("verdict") == key)
    return out


def run_errors(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Errors outside any claim (a suite that does not parse, a model that does not load)."""
    return [
        {"where": fmt_any(e.get("where")), "message": fmt_any(e.get("message"))}
        if isinstance(e, Mapping)
        else {"where": "run", "message": fmt_any(e)}
        for e in as_list(results.get("errors"))
    ]


def suites(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [suite for suite in results.get("suites") or [] if isinstance(suite, Mapping)]


def fmt_pickle_trust(value: Any) -> str:
    """``off`` or ``ON (from <source>)``: whether the model file was allowed to run code."""
    trust = mapping(value)
    if "enabled" not in trust:
        return MISSING
    if trust["enabled"] is not True:
        return "off (pickled code refused)"
    return f"ON (from {fmt_any(trust.get('source'))}): the model file was allowed to run code"


def output_resize(model: Mapping[str, Any]) -> str | None:
    """How the model's logits were resized to its input, from ``provenance.model``."""
    return fmt_resize(
        model.get("input_resolution"), model.get("output_resolution"), model.get("resize_factor")
    )


def evidence_files(raw: Any) -> list[dict[str, Any]]:
    """Evidence files (``{name: relative path}``) with a safe link where there can be one."""
    return [
        {
            "name": str(name),
            "label": path.replace("\\", "/").rsplit("/", 1)[-1],
            "path": path,
            "href": fmt_href(path),
        }
        for name, path in mapping(raw).items()
        if isinstance(path, str) and path
    ]


def radius_value(raw: Any) -> float | None:
    """A radius as recorded (``0.1``, ``"4/255"``), as a float; ``None`` if it does not parse."""
    try:
        return parse_epsilon(raw).value
    except ValueError:
        return None


def same_value(a: float, b: float) -> bool:
    """Two recorded floats (radii, constants) that stand for the same value."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)

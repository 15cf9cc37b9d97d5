"""The claims of a record as a plain-text table, for the end of a pytest run.

Columns: claim, measured, interval, threshold, verdict (and the change against a baseline
when the entries carry one).  On a narrow terminal the interval and then the threshold are
dropped and the claim column is shortened from the left, so each claim stays one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_VERDICT = {
    "passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP", "not_run": "NOT RUN",
}  # fmt: skip
_NARROWEST_CLAIM = 16


def claims_table(entries: Iterable[Mapping[str, Any]], *, width: int = 100) -> list[str]:
    """Lines of the table; empty when there are no claims."""
    rows = [_row(entry) for entry in entries]
    if not rows:
        return []
    columns = ["claim", "measured", "interval", "threshold", "verdict"]
    if any(row.get("delta") for row in rows):
        columns.insert(4, "delta")
    for dropped in (None, "interval", "threshold", "delta"):
        if dropped in columns:
            columns.remove(dropped)
        widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
        others = sum(widths[c] + 2 for c in columns if c != "claim")
        if others + min(widths["claim"], _NARROWEST_CLAIM) <= width:
            break
    widths["claim"] = max(_NARROWEST_CLAIM, min(widths["claim"], width - others))
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    for row in rows:
        cells = []
        for c in columns:
            text = row.get(c, "")
            if c == "claim" and len(text) > widths[c]:
                text = "…" + text[-(widths[c] - 1) :]  # the end of a node id names the claim
            cells.append(text.ljust(widths[c]))
        lines.append("  ".join(cells).rstrip())
    return lines


def _row(entry: Mapping[str, Any]) -> dict[str, str]:
    interval = entry.get("interval") or {}
    threshold = entry.get("threshold") or {}
    low, high = threshold.get("min"), threshold.get("max")
    if low is not None and high is not None:
        bound = f"[{low:g}, {high:g}]"
    elif low is not None:
        bound = f">= {low:g}"
    elif high is not None:
        bound = f"<= {high:g}"
    else:
        bound = ""
    row = {
        "claim": str(entry.get("nodeid", "")),
        "measured": _number(entry.get("measured")),
        "interval": (
            f"[{_number(interval.get('low'))}, {_number(interval.get('high'))}]"
            if interval.get("low") is not None
            else ""
        ),
        "threshold": bound,
        "verdict": _VERDICT.get(str(entry.get("verdict")), str(entry.get("verdict"))),
    }
    delta = (entry.get("baseline") or {}).get("delta")
    if isinstance(delta, (int, float)):
        row["delta"] = f"{delta:+.4g}"
    return row


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.4g}"

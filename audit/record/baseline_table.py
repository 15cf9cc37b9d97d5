"""A comparison with a baseline run as text: the table ``python -m audit compare`` prints and
the few lines at the end of a pytest run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.record.baseline import REGRESSED, STATUSES, UNCHANGED, number

_INCOMPLETE = "the baseline run did not finish: claims it did not reach are unmeasured"


def fmt(value: Any, signed: bool = False) -> str:
    n = number(value)
    if n is None:
        return "-"
    return f"{n:+.4f}" if signed else f"{n:.4f}"


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # a sha256 reads fine in 12 characters


def describe_changes(changes: list[Mapping[str, Any]]) -> list[str]:
    """One line per changed input."""
    return [
        f"{c['input']}: {c['note']}"
        if c["old"] is None or c["new"] is None
        else f"{c['input']}: {_short(c['old'])} -> {_short(c['new'])} ({c['note']})"
        for c in changes
    ]


def counts_line(comparison: Mapping[str, Any]) -> str:
    counts = comparison["counts"]
    # "0 regressed" is news too; other statuses only when they occur
    parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s) or s == REGRESSED)
    return f"claims against the baseline: {parts} (tolerance {comparison['tolerance']:g})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]


def comparison_table(comparison: Mapping[str, Any]) -> list[str]:
    """The comparison as text: claims (all), evaluations (those that changed), input changes."""
    header = ["claim", "old", "new", "delta", "status"]
    lines = _table(
        header,
        [
            [str(c["nodeid"]), fmt(c["old"]), fmt(c["new"]), fmt(c["delta"], True), c["status"]]
            for c in comparison["claims"]
        ],
    )
    evaluations = comparison["evaluations"]
    moved = [e for e in evaluations if e["status"] != UNCHANGED]
    if evaluations:
        lines.append("")
        lines.append(
            f"evaluations: {len(evaluations) - len(moved)} of {len(evaluations)} values unchanged"
            + (":" if moved else "")
        )
        if moved:
            lines += _table(
                ["evaluation", "old", "new", "delta", "status"],
                [
                    [
                        f"{e['evaluation']} {e['metric']}",
                        fmt(e["old"]),
                        fmt(e["new"]),
                        fmt(e["delta"], True),
                        e["status"],
                    ]
                    for e in moved
                ],
            )
    lines.append("")
    lines.append(f"baseline: {comparison['path']} (sha256 {comparison['sha256'][:12]})")
    if comparison.get("complete") is False:
        lines.append(_INCOMPLETE)
    if comparison["input_changes"]:
        lines.append("inputs changed:")
        lines += [f"  {line}" for line in describe_changes(comparison["input_changes"])]
    else:
        lines.append("inputs changed: none found")
    lines.append(counts_line(comparison))
    return lines


def summary_lines(comparison: Mapping[str, Any], *, limit: int = 8) -> list[str]:
    """A few lines for the end of a pytest run: counts, changed inputs, the regressions."""
    lines = [f"{counts_line(comparison)}; baseline {comparison['path']}"]
    if comparison.get("complete") is False:
        lines.append(f"  {_INCOMPLETE}")
    if comparison["input_changes"]:
        lines.append(
            "  inputs changed: " + ", ".join(c["input"] for c in comparison["input_changes"])
        )
    regressed = [c for c in comparison["claims"] if c["status"] == REGRESSED]
    for row in regressed[:limit]:
        lines.append(
            f"  regressed: {row['nodeid']} {fmt(row['old'])} -> {fmt(row['new'])} "
            f"({fmt(row['delta'], True)})"
        )
    if len(regressed) > limit:
        lines.append(f"  ... and {len(regressed) - limit} more regressed claims")
    evaluations = sum(1 for e in comparison["evaluations"] if e["status"] == REGRESSED)
    if evaluations:
        lines.append(
            f"  {evaluations} evaluation value(s) regressed (python -m audit compare lists them)"
        )
    return lines

"""What the report draws over a curve besides the curve: claims' thresholds and intervals, a
baseline run's values, and the sentence that says what a chart shows.

A claim is drawn on a chart only in the chart's own quantity: a section turns each claim it
can place into a :class:`ClaimMark` (threshold and interval already in the plotted unit, or
left out when no exact conversion exists), and these helpers decide the geometry.  A sweep's
items (``fgsm[linf-4/255]``, ``fgsm[linf-8/255]``, ...) share one threshold line over the
epsilons they cover; sweeps with the same bound over the same span share a line and a label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit.report.accessors import as_list, mapping
from audit.report.format import finite, fmt_bound, fmt_num, fmt_short

#: stroke of a claim's threshold: dash-dot, so it reads apart from dashed and dotted series
#: in greyscale too
THRESHOLD_DASH = "8 3 2 3"
THRESHOLD_COLOR = "#1b1f24"
#: stroke of a baseline run's values: dotted, in the colour of the series it shadows
BASELINE_DASH = "2 3"
BASELINE_COLOR = "#57606a"
#: the longest threshold label drawn (the full one is in the line's tooltip)
_LABEL_CHARS = 44
_BOUND_SIGN = {"min": "≥", "max": "≤"}

Scale = Callable[[float], float]


@dataclass(frozen=True)
class ClaimMark:
    """One claim placed on a chart: its threshold and interval in the chart's quantity."""

    group: str  # the sweep's claim id (``fgsm`` for ``fgsm[linf-4/255]``)
    name: str  # the item's id, for tooltips
    x: float  # its epsilon or radius
    x_text: str
    bounds: tuple[tuple[str, float], ...]  # ("min" | "max", value), plotted unit
    interval: tuple[float, float] | None  # plotted unit
    quantity: str  # what the claim states (``IoU ratio``, ``mIoU``)
    note: str = ""  # how a threshold was converted into the plotted quantity
    color: str = THRESHOLD_COLOR
    series: int = 0  # which series (for the interval's small sideways offset)


def sweep_group(claim: Mapping[str, Any]) -> str:
    """The id a sweep's items share: ``fgsm[linf-4/255]`` -> ``fgsm``."""
    text = str(claim.get("id") or claim.get("nodeid") or "claim")
    return text.split("[", 1)[0] if text.endswith("]") and "[" in text else text


def claim_bounds(claim: Mapping[str, Any], scale: float = 1.0) -> tuple[tuple[str, float], ...]:
    """The claim's finite ``min``/``max`` bounds, each divided by ``scale``."""
    threshold = mapping(claim.get("threshold"))
    out = []
    for side in ("min", "max"):
        value = finite(threshold.get(side))
        if value is not None:
            out.append((side, value / scale))
    return tuple(out)


def claim_interval(claim: Mapping[str, Any], scale: float = 1.0) -> tuple[float, float] | None:
    interval = mapping(claim.get("interval"))
    low, high = finite(interval.get("low")), finite(interval.get("high"))
    if low is None or high is None:
        return None
    return (low / scale, high / scale)


def _span(xs: Sequence[float], to_x: Scale, pad: float, left: float, right: float) -> tuple:
    return (round(max(left, to_x(min(xs)) - pad), 1), round(min(right, to_x(max(xs)) + pad), 1))


def threshold_lines(
    marks: Sequence[ClaimMark],
    to_x: Scale,
    to_y: Scale,
    *,
    left: float,
    right: float,
    pad: float = 12.0,
) -> list[dict[str, Any]]:
    """Dashed horizontal lines, one per distinct (bound, value, epsilon span)."""
    sweeps: dict[tuple[str, str, float, str], list[ClaimMark]] = {}
    for mark in marks:
        for side, value in mark.bounds:
            key = (mark.group, side, round(value, 9), mark.note)
            sweeps.setdefault(key, []).append(mark)
    lines: dict[tuple[str, float, float, float], dict[str, Any]] = {}
    for (group, side, value, note), members in sweeps.items():
        first, last = min(members, key=lambda m: m.x), max(members, key=lambda m: m.x)
        x1, x2 = _span([first.x, last.x], to_x, pad, left, right)
        # sweeps with the same bound over the same span share one line and one label
        line = lines.setdefault(
            (side, value, x1, x2),
            {"side": side, "value": value, "x1": x1, "x2": x2, "groups": [], "notes": [],
             "quantity": first.quantity, "from": first.x_text, "to": last.x_text},
        )  # fmt: skip
        line["groups"].append(group)
        if note and note not in line["notes"]:
            line["notes"].append(note)
    out = []
    for line in lines.values():
        y = to_y(line["value"])
        sign = _BOUND_SIGN[line["side"]]
        names = ", ".join(line["groups"])
        # a bound converted to the ratio axis (an mIoU bound over the clean mIoU) has many
        # digits; four tell it apart on a chart, the tooltip keeps them all
        label = f"{names} {sign} {line['value']:.4g}"
        span = line["from"] if line["from"] == line["to"] else f"{line['from']} – {line['to']}"
        notes = f" ({'; '.join(line['notes'])})" if line["notes"] else ""
        out.append(
            {
                "x1": line["x1"],
                "x2": line["x2"],
                "y": y,
                "label": fmt_short(label, _LABEL_CHARS),
                "label_x": line["x2"],
                # below the line for a max, above for a min: the side the claim forbids
                "label_y": round(y + 13 if line["side"] == "max" else y - 4, 1),
                "title": f"claim threshold: {names} require {line['quantity']} {sign} "
                f"{fmt_bound(line['value'])} at {span}{notes}",
            }
        )
    return out


def interval_bars(
    marks: Sequence[ClaimMark], to_x: Scale, to_y: Scale, *, series_count: int
) -> list[dict[str, Any]]:
    """An error bar (with caps) per claim interval, nudged sideways by series so the bars
    of several attacks at one epsilon do not hide each other."""
    out = []
    for mark in marks:
        if mark.interval is None:
            continue
        low, high = mark.interval
        offset = (mark.series - (series_count - 1) / 2) * 3.0 if series_count > 1 else 0.0
        x = round(to_x(mark.x) + offset, 1)
        y_low, y_high = to_y(low), to_y(high)
        out.append(
            {
                "color": mark.color,
                "path": f"M{x},{y_low}V{y_high}M{x - 3:.1f},{y_low}h6M{x - 3:.1f},{y_high}h6",
                "title": f"{mark.name}: {mark.quantity} interval {fmt_num(low)} – "
                f"{fmt_num(high)} at {mark.x_text}" + (f" ({mark.note})" if mark.note else ""),
            }
        )
    return out


def baseline_values(results: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """``(evaluation id, metric) -> the baseline run's value`` from the record's
    ``baseline.evaluations`` rows (audit.record.baseline.compare_evaluations)."""
    out: dict[tuple[str, str], float] = {}
    for row in as_list(mapping(results.get("baseline")).get("evaluations")):
        if not isinstance(row, Mapping):
            continue
        old = finite(row.get("old"))
        evaluation, metric = row.get("evaluation"), row.get("metric")
        if old is not None and isinstance(evaluation, str) and isinstance(metric, str):
            out[(evaluation, metric)] = old
    return out


def trend(values: Sequence[float]) -> str:
    """``falls from 0.99 to 0.15`` (or rises, or stays at) for a chart's description."""
    if not values:
        return "no values"
    first, last = values[0], values[-1]
    if len(values) == 1:
        return f"is {first:.2f}"
    if f"{first:.2f}" == f"{last:.2f}":
        return f"stays at {first:.2f}"
    verb = "falls" if last < first else "rises"
    return f"{verb} from {first:.2f} to {last:.2f}"

"""Certificate soundness for the Certificates section: certificates attacked.

Each soundness check attacks the model inside the radius a certificate guarantees.  Its block
lists the attacks (pixels certified, certified pixels flipped, the largest perturbation), draws
each pixel's certified radius against the radius a minimal-norm attack needed (a point below the
diagonal is a certificate beaten) and shows a counterexample or a falsified constant when there
is one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from audit.report.accessors import (
    IndexedClaim,
    as_list,
    claim_ref_measured,
    evidence_files,
    mapping,
    of_kind,
    recorded,
)
from audit.report.charts import (
    LEGEND_ROW,
    PALETTE,
    PlotArea,
    marker_path,
)
from audit.report.format import (
    NA,
    finite,
    fmt_any,
    fmt_count,
    fmt_eps,
    fmt_seconds,
    fmt_sig,
    fmt_text,
    fmt_tick,
)
from audit.report.lipschitz import LipschitzSources

#: the most points one soundness scatter draws (violations first, then an even subsample)
MAX_SCATTER_POINTS = 1500
VIOLATION_COLOR = "#cf222e"

# Scatter geometry, in SVG user units; the right margin leaves room for the diagonal's label.
_SCATTER = PlotArea(left=58, width=300, top=30, height=300, right=46)

SoundnessRecord = tuple[Mapping[str, Any], IndexedClaim | None]


def _subsample(points: Sequence[Any], limit: int) -> list[Any]:
    if len(points) <= limit:
        return list(points)
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)]


def _log_domain(values: Sequence[float]) -> tuple[int, int]:
    """Whole decades around the positive ``values`` (one decade at least)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return (-3, 0)
    low = math.floor(math.log10(min(positive)) + 1e-9)
    high = math.ceil(math.log10(max(positive)) - 1e-9)
    return (low, max(high, low + 1))


def _decade_ticks(low: int, high: int) -> list[float]:
    """Decades, with 2 and 5 between them when the axis spans two decades or fewer."""
    steps = (1.0, 2.0, 5.0) if high - low <= 2 else (1.0,)
    ticks = [m * 10.0**k for k in range(low, high) for m in steps]
    return [*ticks, 10.0**high]


def _scatter(
    checks: Sequence[Mapping[str, Any]], colors: Mapping[str, str]
) -> dict[str, Any] | None:
    """Certified against empirical radius on log-log axes of the same range: the diagonal is
    y = x, a point below it is a certificate beaten, and the height above it is the gap
    (guides at 2x and 10x).  A radius of 0 has no place on a log axis: it is drawn on the
    axis line and counted."""
    pairs: list[tuple[str, float, float]] = []
    for check in checks:
        attack = fmt_text(check.get("attack"))
        for pair in as_list(check.get("scatter")):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                continue
            cert, emp = finite(pair[0]), finite(pair[1])
            if cert is not None and emp is not None and cert >= 0 and emp >= 0:
                pairs.append((attack, cert, emp))
    if not pairs:
        return None
    below = [p for p in pairs if p[2] < p[1]]
    above = [p for p in pairs if p[2] >= p[1]]
    shown_below = _subsample(below, MAX_SCATTER_POINTS)
    shown_above = _subsample(above, MAX_SCATTER_POINTS - len(shown_below))
    low, high = _log_domain([v for _, c, e in pairs for v in (c, e)])
    span = high - low
    area = _SCATTER

    def to_x(value: float) -> float:
        fraction = (math.log10(value) - low) / span if value > 0 else 0.0
        return round(area.left + min(max(fraction, 0.0), 1.0) * area.width, 1)

    def to_y(value: float) -> float:
        fraction = (math.log10(value) - low) / span if value > 0 else 0.0
        return round(area.bottom - min(max(fraction, 0.0), 1.0) * area.height, 1)

    groups: dict[str, list[tuple[float, float]]] = {}
    for attack, cert, emp in shown_above:
        groups.setdefault(attack, []).append((to_x(cert), to_y(emp)))
    series = [
        {
            "attack": attack,
            "color": colors.get(attack, PALETTE[0]),
            "count": len(points),
            # one dot per zero-length segment with round caps: a few bytes per point
            "path": "".join(f"M{x},{y}h0" for x, y in points),
            "points": points,
        }
        for attack, points in groups.items()
    ]
    violations = [
        {
            "x": to_x(cert),
            "y": to_y(emp),
            "path": marker_path("diamond", to_x(cert), to_y(emp), 3.6),
            "title": f"{attack}: certified radius {fmt_eps(cert)}, empirical {fmt_eps(emp)}",
        }
        for attack, cert, emp in shown_below
    ]
    bottom_v, top_v = 10.0**low, 10.0**high
    ticks = [
        {"x": to_x(v), "y": to_y(v), "label": fmt_tick(v), "decade": _is_decade(v)}
        for v in _decade_ticks(low, high)
    ]
    guides = []
    for factor, label in ((2.0, "×2"), (10.0, "×10")):
        shift = math.log10(factor)
        if shift >= span:
            continue
        end = top_v / factor
        guides.append(
            {
                "x1": to_x(bottom_v),
                "y1": to_y(bottom_v * factor),
                "x2": to_x(end),
                "y2": to_y(top_v),
                "label": label,
                "title": f"empirical radius {label[1:]} times the certified one",
            }
        )
    ratios = [p[1] / p[2] for p in pairs if p[2] > 0]
    legend_top = area.bottom + 56
    legend = []
    for i, item in enumerate(series):
        legend.append(
            {
                "label": f"{item['attack']} ({item['count']:,} pixels drawn)",
                "color": item["color"],
                "y": legend_top + i * LEGEND_ROW,
                "red": False,
            }
        )
    if violations:
        legend.append(
            {
                "label": f"below the diagonal: certificate beaten ({len(below)})",
                "color": VIOLATION_COLOR,
                "y": legend_top + len(series) * LEGEND_ROW,
                "red": True,
                "marker": marker_path(
                    "diamond", area.left + 8, legend_top + len(series) * LEGEND_ROW, 3.6
                ),
            }
        )
    zeros = sum(1 for _, c, e in pairs if c == 0 or e == 0)
    median = _median(ratios)
    description = (
        f"{len(pairs):,} pixels' certified radius against the empirical one, log-log axes "
        f"from {fmt_tick(bottom_v)} to {fmt_tick(top_v)}: "
        + (
            f"{len(below):,} below the diagonal y = x (certificates beaten)"
            if below
            else "none below the diagonal y = x"
        )
        + (f"; median certified / empirical {median:.2f}" if median is not None else "")
    )
    return {
        "width": area.outer_width,
        "height": legend_top + len(legend) * LEGEND_ROW + 4,
        **area.frame(x_title_gap=36),
        "x_ticks": ticks,
        "y_ticks": ticks,
        "diagonal": {
            "x1": to_x(bottom_v),
            "y1": to_y(bottom_v),
            "x2": to_x(top_v),
            "y2": to_y(top_v),
        },
        "diagonal_label": {"x": to_x(top_v) + 4, "y": to_y(top_v) + 4},
        "below_region": f"{area.left},{area.bottom} {to_x(top_v)},{to_y(top_v)} "
        f"{to_x(top_v)},{area.bottom}",
        "guides": guides,
        "series": series,
        "violations": violations,
        "legend": legend,
        "legend_x": area.left,
        "total": len(pairs),
        "shown": len(shown_below) + len(shown_above),
        "below": len(below),
        "zeros": zeros,
        "same_scale": True,
        "description": description,
        "median_from_points": fmt_sig(median, 3),
    }


def _is_decade(value: float) -> bool:
    exponent = math.log10(value)
    return abs(exponent - round(exponent)) < 1e-9


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _check_row(check: Mapping[str, Any], eps: float | None, color: str) -> dict[str, Any]:
    flipped = finite(check.get("flipped_certified"))
    metric = finite(check.get("metric_violations"))
    norm = finite(check.get("max_perturbation_norm"))
    return {
        "attack": fmt_text(check.get("attack")),
        "color": color,
        "certified_pixels": fmt_count(check.get("certified_pixels")),
        "flipped_certified": fmt_count(flipped),
        "flipped_bad": flipped is not None and flipped > 0,
        "flipped_any": fmt_count(check.get("flipped_any")),
        "metric_violations": fmt_count(metric),
        "metric_bad": metric is not None and metric > 0,
        "max_norm": fmt_sig(norm),
        "norm_over": norm is not None and eps is not None and norm > eps * (1 + 1e-3) + 1e-9,
        "tightness": fmt_sig(check.get("tightness_median"), 3),
        "margin_use": _margin_use(check),
        # An attack that moved nothing tested nothing: say so rather than read as a pass.
        "idle": finite(check.get("flipped_any")) == 0 or norm == 0,
        "pairs": len(as_list(check.get("scatter"))),
    }


def _margin_use(check: Mapping[str, Any]) -> str:
    median, most = finite(check.get("margin_use_median")), finite(check.get("margin_use_max"))
    if median is None or most is None:
        return NA
    return f"{median:.0%} / {most:.0%}"


_COUNTEREXAMPLE_FIELDS = (
    ("attack", "Attack"),
    ("sample", "Sample"),
    ("pixel", "Pixel (row, col)"),
    ("margin", "Logit margin"),
    ("certified_radius", "Certified radius"),
    ("lipschitz", "L"),
    ("norm", "Norm"),
    ("eps", "Radius attacked (eps)"),
    ("perturbation_norm", "Perturbation norm"),
    ("flipped_pixels", "Pixels flipped in the image"),
)


def _counterexample(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    rows = []
    for key, label in _COUNTEREXAMPLE_FIELDS:
        value = raw.get(key)
        if key == "pixel" and isinstance(value, list | tuple) and len(value) == 2:
            text = f"({fmt_any(value[0])}, {fmt_any(value[1])})"
        elif key == "flipped_pixels":
            text = fmt_count(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = fmt_sig(value, 6)
        else:
            text = fmt_text(value) if not isinstance(value, Mapping | list) else fmt_any(value)
        rows.append({"label": label, "value": text})
    cert, norm = finite(raw.get("certified_radius")), finite(raw.get("perturbation_norm"))
    summary = ""
    if cert is not None and norm is not None:
        summary = (
            f"A perturbation of L2 norm {fmt_sig(norm, 4)} changed the prediction of a pixel "
            f"certified up to {fmt_sig(cert, 4)}"
            + (": the certificate is unsound." if norm < cert else ".")
        )
    return {"rows": rows, "files": evidence_files(raw.get("files")), "summary": summary}


def _falsified(raw: Any, lipschitz: Mapping[str, Any]) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    return {
        "lower_bound": fmt_sig(raw.get("lower_bound"), 6),
        "claimed": fmt_sig(lipschitz.get("value"), 6),
        "method": fmt_text(raw.get("method")),
        "files": evidence_files(raw.get("files")),
    }


def soundness_records(
    results: Mapping[str, Any], claims: Sequence[IndexedClaim]
) -> list[SoundnessRecord]:
    """Soundness entries with their claim; from the claims' evidence when none were recorded."""
    soundness = of_kind(claims, "certificate_soundness")
    by_nodeid = {c["nodeid"]: (i, c) for i, c in soundness if isinstance(c.get("nodeid"), str)}
    entries = recorded(results, "soundness")
    if isinstance(entries, list):
        return [
            (entry, by_nodeid.get(entry["claim"]) if isinstance(entry.get("claim"), str) else None)
            for entry in entries
            if isinstance(entry, Mapping)
        ]
    records: list[SoundnessRecord] = []
    for index, claim in soundness:
        nodeid = claim.get("nodeid") or claim.get("id")
        evidence = mapping(claim.get("evidence"))
        if not evidence:
            continue
        files = mapping(evidence.get("files"))
        counterexample = evidence.get("counterexample")
        if isinstance(counterexample, Mapping):
            counterexample = {
                **counterexample,
                "files": {k: v for k, v in files.items() if k in ("input", "perturbation")},
            }
        falsified = evidence.get("falsified")
        if isinstance(falsified, Mapping):
            falsified = {
                **falsified,
                "files": {k: v for k, v in files.items() if str(k).startswith("falsifying")},
            }
        entry = {
            "claim": nodeid,
            "eps": evidence.get("radius"),
            "violations": claim.get("measured"),
            "lipschitz": evidence.get("lipschitz"),
            "checks": evidence.get("checks"),
            "counterexample": counterexample,
            "falsified": falsified,
            "num_samples": claim.get("num_samples"),
        }
        records.append((entry, (index, claim)))
    return records


def soundness_blocks(
    records: Sequence[SoundnessRecord], sources: LipschitzSources
) -> list[dict[str, Any]]:
    """One block per soundness check; the constants they rely on join ``sources``."""
    attack_colors: dict[str, str] = {}
    # Vermillion reads as red next to the violations: leave it out of the scatter palette.
    palette = [c for c in PALETTE if c != "#D55E00"]
    blocks = []
    for number, (entry, claim) in enumerate(records):
        eps = finite(entry.get("eps"))
        ref = claim_ref_measured(*claim) if claim is not None else None
        title = str(
            entry.get("claim") or (ref["nodeid"] if ref else f"soundness check {number + 1}")
        )
        lipschitz = mapping(entry.get("lipschitz"))
        source = sources.add(lipschitz, f"soundness {title}") if lipschitz else None
        checks = [c for c in as_list(entry.get("checks")) if isinstance(c, Mapping)]
        for check in checks:
            attack = fmt_text(check.get("attack"))
            attack_colors.setdefault(attack, palette[len(attack_colors) % len(palette)])
        violations = finite(entry.get("violations"))
        counterexample = _counterexample(entry.get("counterexample"))
        falsified = _falsified(entry.get("falsified"), lipschitz)
        refuted_at = finite(mapping(entry.get("falsified")).get("lower_bound"))
        claimed = finite(lipschitz.get("value"))
        if refuted_at is not None and claimed is not None and refuted_at > claimed:
            sources.refute(claimed, refuted_at)
        tightness = [
            {"attack": fmt_text(c.get("attack")), "value": fmt_sig(c.get("tightness_median"), 3)}
            for c in checks
            if finite(c.get("tightness_median")) is not None
        ]
        blocks.append(
            {
                "anchor": f"soundness-{number + 1}",
                "title": title,
                "claim": ref,
                "eps": fmt_eps(eps) if eps is not None else NA,
                "violations": fmt_count(violations),
                "violated": bool(violations) or counterexample is not None or falsified is not None,
                "lipschitz": f"L = {fmt_sig(lipschitz.get('value'), 6)}"
                + (f" ({source['kind']})" if source else ""),
                "num_samples": fmt_count(entry.get("num_samples")),
                "seconds": fmt_seconds(entry.get("seconds")),
                "checks": [
                    _check_row(c, eps, attack_colors[fmt_text(c.get("attack"))]) for c in checks
                ],
                "scatter": _scatter(checks, attack_colors),
                "tightness": tightness,
                "counterexample": counterexample,
                "falsified": falsified,
            }
        )
    return blocks

"""Certified accuracy for the Certificates section: the certifications, their table, curves
and radius maps.

Following Massena et al. (arXiv 2512.06010), certified pixel accuracy is drawn against the L2
radius on a linear axis; a randomized-smoothing certification (SegCertify, Fischer et al.,
ICML 2021) certifies one radius only, so it is a single point (a step down to 0 beyond its
radius).  The table gives every certification at the radii the certified claims name.  Over
the curves: each certified claim on certified pixel accuracy, its threshold (dash-dot, over
the radii its sweep covers) and interval (an error bar at its radius), in its certification's
colour; and a baseline run's certified accuracy (dotted) where the record compares with one.
A claim on another quantity (certified mIoU) has no place on this axis and is not drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from audit.report.accessors import (
    IndexedClaim,
    as_list,
    claim_ref_measured,
    mapping,
    of_kind,
    radius_value,
    same_value,
)
from audit.report.charts import UNIT_TICKS, PlotArea, colour_bar, marker_path, nice_top, round_ticks
from audit.report.format import (
    NA,
    finite,
    fmt_any,
    fmt_compact_resolution,
    fmt_count,
    fmt_eps,
    fmt_num,
    fmt_pct,
    fmt_per_image,
    fmt_resolution,
    fmt_seconds,
    fmt_sig,
)
from audit.report.lipschitz import LipschitzSources
from audit.report.overlays import (
    BASELINE_COLOR,
    BASELINE_DASH,
    THRESHOLD_COLOR,
    THRESHOLD_DASH,
    ClaimMark,
    claim_bounds,
    claim_interval,
    interval_bars,
    sweep_group,
    threshold_lines,
    trend,
)

CLEAN_COLOR = "#57606a"
CLAIM_RADIUS_COLOR = "#afb8c1"

# Curve chart geometry, in SVG user units.
_PLOT = PlotArea(left=58, width=520, top=40, height=260, right=22)
_LEGEND_SHORT, _LEGEND_CHARS = 40, 84


def claim_radii(claims: Sequence[IndexedClaim]) -> list[float]:
    """The radii certified claims were stated at, sorted and without duplicates."""
    radii: list[float] = []
    for _, claim in of_kind(claims, "certified"):
        raw = mapping(claim.get("params")).get("eps")
        for item in raw if isinstance(raw, list) else [raw]:
            value = radius_value(item)
            if value is not None and not any(same_value(value, r) for r in radii):
                radii.append(value)
    return sorted(radii)


# -- the certifications -------------------------------------------------------------------
def _series_points(radii: Sequence[Any], values: Any) -> list[tuple[float, float]]:
    points = []
    for radius, value in zip(radii, as_list(values), strict=False):
        r, v = finite(radius), finite(value)
        if r is not None and v is not None and r >= 0:
            points.append((r, v))
    return sorted(points)


def _value_at(points: Sequence[tuple[float, float]], radius: float) -> float | None:
    for r, v in points:
        if same_value(r, radius):
            return v
    return None


def _smoothing_label(config: Mapping[str, Any]) -> str:
    parts = []
    for key, symbol in (("sigma", "σ"), ("n", "n"), ("n0", "n0"), ("tau", "τ"), ("alpha", "α")):
        value = config.get(key)
        if value is not None:
            parts.append(
                f"{symbol} {fmt_sig(value) if finite(value) is not None else fmt_any(value)}"
            )
    if config.get("correction"):
        parts.append(str(config["correction"]))
    return ", ".join(parts)


def _attach(
    claims: Sequence[IndexedClaim], certifier: str, match: Callable[[Mapping[str, Any]], bool]
) -> list[dict[str, str]]:
    """The certified claims of ``certifier`` whose evidence ``match`` accepts."""
    out = []
    for index, claim in of_kind(claims, "certified"):
        evidence = mapping(claim.get("evidence"))
        params = mapping(claim.get("params"))
        if (evidence.get("certifier") or params.get("certifier")) != certifier:
            continue
        if match(evidence):
            out.append(claim_ref_measured(index, claim))
    return out


def _marks(
    claims: Sequence[IndexedClaim],
    certifier: str,
    match: Callable[[Mapping[str, Any]], bool],
    color: str,
) -> list[ClaimMark]:
    """The certified-pixel-accuracy claims of this certification, placed at their radius."""
    out = []
    for _, claim in of_kind(claims, "certified"):
        evidence = mapping(claim.get("evidence"))
        params = mapping(claim.get("params"))
        if (evidence.get("certifier") or params.get("certifier")) != certifier:
            continue
        metric = claim.get("metric") or params.get("metric")
        norm = str(params.get("norm") or "l2").lower()
        if metric != "certified_pixel_accuracy" or norm != "l2" or not match(evidence):
            continue
        radius = finite(evidence.get("radius"))
        if radius is None:
            radius = radius_value(params.get("eps"))
        if radius is None:
            continue
        out.append(
            ClaimMark(
                group=sweep_group(claim),
                name=str(claim.get("id") or claim.get("nodeid") or "claim"),
                x=radius,
                x_text=f"radius {fmt_eps(radius)}",
                bounds=claim_bounds(claim),
                interval=claim_interval(claim),
                quantity="certified pixel accuracy",
                color=color,
            )
        )
    return out


def _cost(entry: Mapping[str, Any]) -> dict[str, str]:
    """What a certification covered and what it cost, as the table shows it."""
    resolution = entry.get("resolution")
    return {
        "num_samples": fmt_count(entry.get("num_samples")),
        "resolution": "" if resolution is None else "at " + fmt_compact_resolution(resolution),
        "forward_passes": fmt_count(entry.get("forward_passes")),
        "seconds": fmt_seconds(entry.get("seconds")),
        "per_image": fmt_per_image(entry.get("seconds"), entry.get("num_samples")),
    }


def _radii_text(radii: Sequence[Any]) -> str:
    finite_radii = sorted({r for r in (finite(x) for x in radii) if r is not None})
    if not finite_radii:
        return NA
    if len(finite_radii) == 1:
        return fmt_eps(finite_radii[0])
    return f"{fmt_eps(finite_radii[0])} – {fmt_eps(finite_radii[-1])} ({len(finite_radii)} radii)"


def lipschitz_entry(
    index: int,
    entry: Mapping[str, Any],
    color: str,
    sources: LipschitzSources,
    claims: Sequence[IndexedClaim],
    table_radii: Sequence[float],
) -> dict[str, Any]:
    """A Lipschitz certification: certified accuracy and fraction along a grid of radii."""
    entry_id = str(entry.get("id") or f"lipschitz {index + 1}")
    lipschitz = mapping(entry.get("lipschitz"))
    source = sources.add(lipschitz, f"certification {entry_id}")
    value = finite(lipschitz.get("value"))
    radii = as_list(entry.get("radii"))
    pa = _series_points(radii, entry.get("certified_pixel_accuracy"))
    fraction = _series_points(radii, entry.get("certified_fraction"))
    radii_text = _radii_text(radii)
    at = [
        {
            "radius": fmt_eps(r),
            "pa": fmt_num(_value_at(pa, r)),
            "fraction": "" if _value_at(fraction, r) is None else fmt_pct(_value_at(fraction, r)),
        }
        for r in table_radii
    ]

    def match(evidence: Mapping[str, Any]) -> bool:
        claimed = finite(mapping(evidence.get("lipschitz")).get("value"))
        return value is not None and claimed is not None and same_value(claimed, value)

    clean = finite(entry.get("clean_pixel_accuracy"))
    return {
        "raw": entry,
        "id": entry_id,
        "certifier": "Lipschitz",
        "color": color,
        "lipschitz": fmt_sig(value, 6),
        "lipschitz_kind": source["kind"] if source else NA,
        "setting": f"L = {fmt_sig(value, 6)}" + (f" ({source['kind']})" if source else ""),
        "setting_detail": f"κ = {fmt_sig(entry.get('kappa'), 3)}"
        if entry.get("kappa") is not None
        else "",
        "radii": radii_text,
        "at": at,
        "clean": fmt_num(clean),
        "clean_raw": clean,
        "extra": "",
        **_cost(entry),
        "claims": _attach(claims, "lipschitz", match),
        "marks": _marks(claims, "lipschitz", match, color),
        "pa_points": pa,
        "fraction_points": fraction,
    }


def smoothing_entry(
    index: int,
    entry: Mapping[str, Any],
    color: str,
    claims: Sequence[IndexedClaim],
    table_radii: Sequence[float],
) -> dict[str, Any]:
    """A randomized-smoothing certification: one certified accuracy at one radius R."""
    entry_id = str(entry.get("id") or f"smoothing {index + 1}")
    config = mapping(entry.get("config"))
    radius = finite(entry.get("radius"))
    pa = finite(entry.get("certified_pixel_accuracy"))
    at = []
    for r in table_radii:
        if radius is None or pa is None:
            text = NA
        elif r <= radius + 1e-12:
            text = fmt_num(pa)
        else:
            text = "0 (beyond R)"
        at.append({"radius": fmt_eps(r), "pa": text, "fraction": ""})
    extra = []
    if entry.get("certified_miou") is not None:
        extra.append(f"certified mIoU {fmt_num(entry.get('certified_miou'))}")
    if entry.get("abstain_rate") is not None:
        extra.append(f"abstained {fmt_pct(entry.get('abstain_rate'))}")

    def match(evidence: Mapping[str, Any]) -> bool:
        return bool(config) and dict(mapping(evidence.get("config"))) == dict(config)

    label = _smoothing_label(config)
    return {
        "raw": entry,
        "id": entry_id,
        "certifier": "Randomized smoothing",
        "color": color,
        "setting": label or NA,
        "setting_detail": "",
        "config_label": label or "config n/a",
        "radii": f"R = {fmt_sig(radius)}" if radius is not None else NA,
        "radius": radius,
        "pa": pa,
        "at": at,
        "clean": NA,
        "clean_raw": None,
        "extra": " · ".join(extra),
        **_cost(entry),
        "claims": _attach(claims, "smoothing", match),
        "marks": _marks(claims, "smoothing", match, color),
    }


# -- the curves ---------------------------------------------------------------------------
def _resolution_note(entries: Iterable[Mapping[str, Any]]) -> str:
    seen: list[str] = []
    for entry in entries:
        if entry.get("resolution") is None:
            continue
        text = fmt_resolution(entry.get("resolution"))
        if text not in seen:
            seen.append(text)
    if not seen:
        return "input resolution not recorded"
    if len(seen) == 1:
        return f"at {seen[0]}"
    return "mixed input resolutions: " + "; ".join(seen)


def _legend_item(
    label: str,
    color: str,
    *,
    dashed: bool = False,
    dotted: bool = False,
    shape: str = "",
    kind: str = "line",
    dash: str = "",
) -> dict[str, Any]:
    return {
        "label": label,
        "color": color,
        "dashed": dashed,
        "dotted": dotted,
        "shape": shape,
        "kind": kind,
        "dash": dash,
    }


Scale = Callable[[float], float]


def _lipschitz_lines(
    certs: Sequence[dict[str, Any]], to_x: Scale, to_y: Scale, legend_items: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two lines per Lipschitz certification, and one clean-accuracy rule per distinct value."""
    lines: list[dict[str, Any]] = []
    clean_lines: dict[float, dict[str, Any]] = {}
    for cert in certs:
        suffix = f" (L {cert['lipschitz']}, {cert['lipschitz_kind']})"
        for key, what, dashed, shape in (
            ("pa_points", "certified pixel accuracy", False, "circle"),
            ("fraction_points", "certified fraction", True, "square"),
        ):
            points = cert[key]
            if not points:
                continue
            show_markers = len(points) <= 40
            label = what + suffix
            lines.append(
                {
                    "series": f"{cert['id']}:{'pa' if key == 'pa_points' else 'fraction'}",
                    "label": label,
                    "color": cert["color"],
                    "dashed": dashed,
                    "points_attr": " ".join(f"{to_x(r)},{to_y(v)}" for r, v in points),
                    "markers": [
                        {
                            "path": marker_path(shape, to_x(r), to_y(v), 2.6),
                            "title": f"{what}, radius {fmt_eps(r)}: {v:.3f}",
                        }
                        for r, v in points
                    ]
                    if show_markers
                    else [],
                }
            )
            legend_items.append(_legend_item(label, cert["color"], dashed=dashed, shape=shape))
        clean = cert["clean_raw"]
        if clean is not None:
            clean_lines.setdefault(round(clean, 6), {"value": clean, "ids": []})["ids"].append(
                cert["id"]
            )
    clean_rules = [
        {
            "y": to_y(item["value"]),
            "label": f"clean pixel accuracy {item['value']:.3f}",
            "label_y": to_y(item["value"]) - 5,
        }
        for item in clean_lines.values()
    ]
    if clean_rules:
        legend_items.append(
            _legend_item("clean pixel accuracy (no perturbation)", CLEAN_COLOR, dotted=True)
        )
    return lines, clean_rules


def _smoothing_steps(
    certs: Sequence[dict[str, Any]], to_x: Scale, to_y: Scale, legend_items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One step per smoothing certification: its accuracy up to R, then 0."""
    steps = []
    for cert in certs:
        x, y = to_x(cert["radius"]), to_y(cert["pa"])
        label = f"smoothing {cert['config_label']}: certified PA up to R {fmt_eps(cert['radius'])}"
        steps.append(
            {
                "series": f"{cert['id']}:smoothing",
                "label": label,
                "color": cert["color"],
                "points_attr": f"{_PLOT.left},{y} {x},{y} {x},{to_y(0.0)}",
                "marker": marker_path("diamond", x, y, 5.0),
                "title": f"{label}: {cert['pa']:.3f}",
            }
        )
        legend_items.append(_legend_item(label, cert["color"], dashed=True, shape="diamond"))
    return steps


def _baseline_lines(
    certs: Sequence[dict[str, Any]],
    baseline: Mapping[tuple[str, str], float],
    to_x: Scale,
    to_y: Scale,
) -> list[dict[str, Any]]:
    """A Lipschitz certification's accuracy in the baseline run (its ``certified_pixel_
    accuracy@<radius>`` rows), dotted in the certification's colour."""
    out = []
    for cert in certs:
        points = [
            (r, baseline[(cert["id"], f"certified_pixel_accuracy@{r:g}")])
            for r, _ in cert["pa_points"]
            if (cert["id"], f"certified_pixel_accuracy@{r:g}") in baseline
        ]
        if points:
            out.append(
                {
                    "color": cert["color"],
                    "points_attr": " ".join(f"{to_x(r)},{to_y(v)}" for r, v in points),
                    "title": f"baseline run, certified pixel accuracy (L {cert['lipschitz']}) "
                    f"at radius {fmt_eps(points[0][0])} – {fmt_eps(points[-1][0])}: "
                    + trend([v for _, v in points]),
                }
            )
    return out


def _describe(
    lipschitz: Sequence[dict[str, Any]],
    smoothing: Sequence[dict[str, Any]],
    thresholds: Sequence[dict[str, Any]],
) -> str:
    parts = []
    for cert in lipschitz:
        points = cert["pa_points"]
        if points:
            parts.append(
                f"certified pixel accuracy (L {cert['lipschitz']}) at L2 radius "
                f"{fmt_eps(points[0][0])} to {fmt_eps(points[-1][0])}: "
                + trend([v for _, v in points])
            )
    for cert in smoothing:
        parts.append(
            f"smoothing {cert['config_label']}: certified pixel accuracy {cert['pa']:.2f} up "
            f"to radius {fmt_eps(cert['radius'])}"
        )
    text = "; ".join(parts)
    if thresholds:
        text += ". Claim thresholds: " + "; ".join(t["label"] for t in thresholds)
    return text + "."


def certified_curves(
    lipschitz: Sequence[dict[str, Any]],
    smoothing: Sequence[dict[str, Any]],
    claim_radii: Sequence[float],
    baseline: Mapping[tuple[str, str], float] | None = None,
) -> dict[str, Any] | None:
    """Certified accuracy against the L2 radius, every certification on one chart, with the
    certified claims' thresholds and intervals, and ``baseline``
    (:func:`audit.report.overlays.baseline_values`) dotted where it has values."""
    drawable_l = [c for c in lipschitz if c["pa_points"] or c["fraction_points"]]
    drawable_s = [c for c in smoothing if c["radius"] is not None and c["pa"] is not None]
    if not drawable_l and not drawable_s:
        return None
    highest = max(
        [r for c in drawable_l for r, _ in c["pa_points"] + c["fraction_points"]]
        + [c["radius"] for c in drawable_s]
        + list(claim_radii),
        default=0.0,
    )
    x_top, x_step = nice_top(highest)
    to_x, to_y = _PLOT.linear_x(x_top), _PLOT.linear_y(1.0)
    x_ticks, x_minor = round_ticks(x_top, x_step, to_x)
    legend_items: list[dict[str, Any]] = []
    lines, clean = _lipschitz_lines(drawable_l, to_x, to_y, legend_items)
    steps = _smoothing_steps(drawable_s, to_x, to_y, legend_items)
    claim_lines = [
        {"x": to_x(radius), "label": fmt_eps(radius)} for radius in claim_radii if radius <= x_top
    ]
    if claim_lines:
        legend_items.append(
            _legend_item("radius stated by a certified claim", CLAIM_RADIUS_COLOR, kind="vertical")
        )
    marks = [mark for cert in [*drawable_l, *drawable_s] for mark in cert["marks"]]
    right = _PLOT.left + _PLOT.width
    thresholds = threshold_lines(marks, to_x, to_y, left=_PLOT.left, right=right, pad=8.0)
    intervals = interval_bars(marks, to_x, to_y, series_count=1)
    baselines = _baseline_lines(drawable_l, baseline or {}, to_x, to_y)
    if baselines:
        legend_items.append(_legend_item("baseline", BASELINE_COLOR, dash=BASELINE_DASH))
    if thresholds:
        legend_items.append(_legend_item("claim threshold", THRESHOLD_COLOR, dash=THRESHOLD_DASH))
    if intervals:
        legend_items.append(_legend_item("claim interval (error bar)", THRESHOLD_COLOR, kind="bar"))
    legend, height = _PLOT.legend_below(
        legend_items, gap=58, short_at=_LEGEND_SHORT, max_chars=_LEGEND_CHARS, marker_r=3.5
    )
    return {
        "width": _PLOT.outer_width,
        "height": height,
        **_PLOT.frame(x_title_gap=38),
        "x_title": "L2 radius ([0,1] pixel space)",
        "resolution": _resolution_note(c["raw"] for c in lipschitz),
        "y_title": "certified pixel accuracy / fraction",
        "x_ticks": x_ticks,
        "x_minor": x_minor,
        "y_ticks": [{"y": to_y(v), "label": f"{v:g}"} for v in UNIT_TICKS],
        "lines": lines,
        "clean": clean,
        "steps": steps,
        "claim_lines": claim_lines,
        "thresholds": thresholds,
        "intervals": intervals,
        "baselines": baselines,
        "description": _describe(drawable_l, drawable_s, thresholds),
        "legend": legend,
    }


# -- radius maps --------------------------------------------------------------------------
def _share_captions(raw: Any) -> str:
    shares = []
    for key, share in mapping(raw).items():
        radius = radius_value(key)
        if radius is None:
            continue
        shares.append((radius, f"{fmt_pct(share)} beyond {fmt_eps(radius)}"))
    return ", ".join(text for _, text in sorted(shares))


#: Radius maps drawn per certification (the ``examples`` setting may record more); the
#: others are linked, so the page does not grow with that setting.
MAP_GALLERY = 4


def radius_maps(lipschitz: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-pixel certified radius maps of each Lipschitz certification's examples."""
    blocks = []
    bars = 0
    for cert in lipschitz:
        examples = []
        for index, example in enumerate(as_list(cert["raw"].get("examples"))):
            if not isinstance(example, Mapping):
                continue
            bars += 1
            name = str(example.get("name") or f"example {index + 1}")
            examples.append(
                {
                    "name": name,
                    "image": example.get("image"),
                    "radius_map": example.get("radius_map"),
                    "image_alt": f"input {name}",
                    "map_alt": f"certified radius map of {name}",
                    "bar": colour_bar(example.get("radius_max_shown"), f"cert-viridis-{bars}"),
                    "median": fmt_sig(example.get("median_radius"), 3),
                    "shares": _share_captions(example.get("certified_share_at")),
                }
            )
        if examples:
            blocks.append(
                {
                    "anchor": f"cert-maps-{len(blocks) + 1}",
                    "id": cert["id"],
                    "title": f"Lipschitz certification, L = {cert['lipschitz']}",
                    "open": not blocks,
                    "count": len(examples),
                    "examples": examples[:MAP_GALLERY],
                    "linked": examples[MAP_GALLERY:],
                }
            )
    return blocks

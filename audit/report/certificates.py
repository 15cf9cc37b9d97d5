"""The report's "Certificates" section: L's provenance, certified accuracy, radius maps, soundness.

:func:`build_certificates` turns ``results["evaluations"]["certificates"]`` (Lipschitz and
randomized-smoothing certifications), ``results["evaluations"]["soundness"]`` (certificates
attacked) and the claims of kinds ``certified``, ``certificate_soundness`` and ``lipschitz``
into the context of ``_certificates.html.j2``.  Following Massena et al. (arXiv 2512.06010),
certified pixel accuracy is drawn against the L2 radius on a linear axis; a randomized-smoothing
certification (SegCertify, Fischer et al., ICML 2021) certifies one radius only, so it is a
single point (a step down to 0 beyond its radius).  The soundness scatter puts each pixel's
certified radius against the radius a minimal-norm attack needed: a point below the diagonal
is a certificate beaten.

Charts are SVG geometry computed here, with the Attacks section's palette, markers and tick
placement.  Every field may be missing, null or NaN in a partial or older results file; such
values read "n/a" and are left out of the charts, never raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from audit.report.attacks import (
    _VERDICTS,
    NA,
    PALETTE,
    _compact_resolution,
    _eps_value,
    _finite,
    _list,
    _mapping,
    _num,
    _pct,
    _text,
    _x_ticks,
    marker_path,
)
from audit.report.format import fmt_any, fmt_resolution
from audit.threat import parse_epsilon

#: viridis at five stops, as the engine renders the radius maps (audit.evaluation_entries._VIRIDIS)
VIRIDIS_STOPS = (
    (0.0, "#440154"),
    (0.25, "#3b528b"),
    (0.5, "#21918c"),
    (0.75, "#5ec962"),
    (1.0, "#fde725"),
)
#: the most points one soundness scatter draws (violations first, then an even subsample)
MAX_SCATTER_POINTS = 1500
VIOLATION_COLOR = "#cf222e"
CLEAN_COLOR = "#57606a"
CLAIM_RADIUS_COLOR = "#afb8c1"
#: radii shown in the table when no certified claim names any
_DEFAULT_TABLE_RADII = (0.05, 0.1, 0.17)
_CLAIM_KINDS = ("certified", "certificate_soundness", "lipschitz")

# Curve chart geometry, in SVG user units.
_PLOT_LEFT, _PLOT_WIDTH, _PLOT_RIGHT = 58, 520, 22
_PLOT_TOP, _PLOT_HEIGHT = 40, 260
_LEGEND_ROW = 18
_LEGEND_SHORT, _LEGEND_CHARS = 40, 84
# Scatter geometry.
_SC_LEFT, _SC_SIZE, _SC_RIGHT, _SC_TOP = 58, 300, 16, 30
_BAR_WIDTH, _BAR_HEIGHT = 220, 12


# -- small formatters ---------------------------------------------------------------------
def _sig(value: Any, digits: int = 4) -> str:
    """A constant or radius with ``digits`` significant digits; ``n/a`` when not finite."""
    number = _finite(value)
    return NA if number is None else f"{number:.{digits}g}"


def _count(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return NA
    return f"{int(number):,}" if number == int(number) else f"{number:,.3g}"


def _per_image_time(seconds: Any, images: Any) -> str:
    total, count = _finite(seconds), _finite(images)
    if total is None or count is None or count <= 0:
        return NA
    each = total / count
    return f"{each * 1000:.3g} ms" if each < 1 else f"{each:.3g} s"


def _seconds(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return NA
    return f"{number * 1000:.3g} ms" if number < 1 else f"{number:.3g} s"


def _href(path: Any) -> str | None:
    """A relative link into the report folder, or ``None`` for anything else (URLs, absolute)."""
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")):
        return None
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or ".." in path.replace("\\", "/").split("/"):
        return None
    return quote(path, safe="/._-~")


def _files(raw: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": str(name),
            "label": path.replace("\\", "/").rsplit("/", 1)[-1],
            "path": path,
            "href": _href(path),
        }
        for name, path in _mapping(raw).items()
        if isinstance(path, str) and path
    ]


def _resolution_cell(value: Any) -> str:
    """``"at 128×256"`` for the table, or nothing when not recorded."""
    return "" if value is None else "at " + _compact_resolution(value)


def _radius_value(raw: Any) -> float | None:
    try:
        return parse_epsilon(raw).value
    except ValueError:
        return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _nice_top(value: float, target: int = 6) -> tuple[float, float]:
    """An axis end at or above ``value`` on a round step, and that step."""
    value = value if value > 0 else 0.1
    step = _nice_step(value, target)
    top = math.ceil(value / step - 1e-9) * step
    return top, step


def _tick_label(value: float) -> str:
    return f"{round(value, 10):g}"


def _linear_ticks(top: float, step: float) -> list[float]:
    count = round(top / step)
    return [round(i * step, 10) for i in range(count + 1)]


# -- claims -------------------------------------------------------------------------------
def _claims(results: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    # Indexed among the mapping entries, as the claims table numbers its anchors.
    mappings = [claim for claim in _list(results.get("claims")) if isinstance(claim, Mapping)]
    return [
        (index, claim) for index, claim in enumerate(mappings) if claim.get("kind") in _CLAIM_KINDS
    ]


def _claim_ref(index: int, claim: Mapping[str, Any]) -> dict[str, str]:
    verdict = claim.get("verdict")
    label, css = (
        _VERDICTS.get(verdict, ("UNKNOWN", "unknown"))
        if isinstance(verdict, str)
        else ("UNKNOWN", "unknown")
    )
    return {
        # Same positional anchors as the claims table (sections._claim_anchor).
        "anchor": f"claim-{index + 1}",
        "nodeid": str(claim.get("nodeid") or claim.get("id") or f"claim {index + 1}"),
        "verdict": label,
        "verdict_css": css,
        "measured": _num(claim.get("measured")),
    }


def _claim_radii(claims: Sequence[tuple[int, Mapping[str, Any]]]) -> list[float]:
    """The radii certified claims were stated at, sorted and without duplicates."""
    radii: list[float] = []
    for _, claim in claims:
        if claim.get("kind") != "certified":
            continue
        raw = _mapping(claim.get("params")).get("eps")
        for item in raw if isinstance(raw, list) else [raw]:
            value = _radius_value(item)
            if value is not None and not any(_close(value, r) for r in radii):
                radii.append(value)
    return sorted(radii)


# -- where L comes from -------------------------------------------------------------------
_KINDS = {
    "computed": ("computed upper bound", "pass", "proven from the weights"),
    "claimed": ("claimed, tested", "warn", "a hypothesis the falsification search did not break"),
}


def _layers(bound: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for index, layer in enumerate(_list(bound.get("layers"))):
        if not isinstance(layer, Mapping):
            continue
        rows.append(
            {
                "index": str(index + 1),
                "name": _text(layer.get("name")),
                "kind": _text(layer.get("kind")),
                "bound": _sig(layer.get("bound"), 6),
                "method": _text(layer.get("method")),
            }
        )
    return rows


class _Sources:
    """Distinct Lipschitz constants, keyed by value and kind, with who used each."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, raw: Any, used_by: str) -> dict[str, Any] | None:
        lipschitz = _mapping(raw)
        bound = _mapping(lipschitz.get("bound"))
        value = _finite(lipschitz.get("value"))
        if value is None:
            value = _finite(bound.get("value"))
        if value is None and not lipschitz:
            return None
        kind = lipschitz.get("kind") if isinstance(lipschitz.get("kind"), str) else None
        if kind is None and bound:
            kind = "computed"
        for item in self.items:
            same_value = (
                item["value_raw"] is not None
                and value is not None
                and _close(item["value_raw"], value)
            ) or (item["value_raw"] is None and value is None)
            if same_value and item["kind_raw"] == kind:
                if used_by not in item["used_by"]:
                    item["used_by"].append(used_by)
                return item
        label, css, meaning = _KINDS.get(kind or "", (_text(kind), "unknown", ""))
        lower = _finite(lipschitz.get("lower_bound"))
        item = {
            "value_raw": value,
            "kind_raw": kind,
            "value": _sig(value, 6),
            "kind": label,
            "kind_css": css,
            "meaning": meaning,
            "description": _text(lipschitz.get("description")),
            "method": _text(bound.get("method")) if bound else NA,
            "bound_value": _sig(bound.get("value"), 6) if bound else NA,
            "lower_bound": _sig(lower, 6) if lower is not None else "",
            "lower_below": lower is None or value is None or lower <= value * (1 + 1e-3),
            "layers": _layers(bound),
            "used_by": [used_by],
        }
        self.items.append(item)
        return item

    def context(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in item.items() if not k.endswith("_raw")} for item in self.items]


def _lipschitz_claims(
    claims: Sequence[tuple[int, Mapping[str, Any]]], sources: _Sources
) -> list[dict[str, Any]]:
    rows = []
    for index, claim in claims:
        if claim.get("kind") != "lipschitz":
            continue
        evidence = _mapping(claim.get("evidence"))
        bound = _mapping(evidence.get("bound"))
        ref = _claim_ref(index, claim)
        if bound:
            sources.add(
                {"value": bound.get("value"), "kind": "computed", "bound": bound},
                f"claim {ref['nodeid']}",
            )
        claimed = _finite(_mapping(claim.get("threshold")).get("max"))
        lower = _finite(evidence.get("lower_bound"))
        rows.append(
            {
                **ref,
                "claimed": _sig(claimed, 6),
                "bound": _sig(bound.get("value") if bound else claim.get("measured"), 6),
                "lower_bound": _sig(lower, 6),
                "lower_method": _text(evidence.get("lower_bound_method")),
                "falsified": lower is not None and claimed is not None and lower > claimed,
                "message": str(claim.get("message") or ""),
                "files": _files(evidence.get("files")),
            }
        )
    return rows


# -- the curves ---------------------------------------------------------------------------
def _series_points(radii: Sequence[Any], values: Any) -> list[tuple[float, float]]:
    points = []
    for radius, value in zip(radii, _list(values), strict=False):
        r, v = _finite(radius), _finite(value)
        if r is not None and v is not None and r >= 0:
            points.append((r, v))
    return sorted(points)


def _smoothing_label(config: Mapping[str, Any]) -> str:
    parts = []
    for key, symbol in (("sigma", "σ"), ("n", "n"), ("n0", "n0"), ("tau", "τ"), ("alpha", "α")):
        value = config.get(key)
        if value is not None:
            parts.append(
                f"{symbol} {_sig(value) if _finite(value) is not None else fmt_any(value)}"
            )
    if config.get("correction"):
        parts.append(str(config["correction"]))
    return ", ".join(parts)


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


def _legend(
    items: Sequence[dict[str, Any]], top: int, width: int
) -> tuple[list[dict[str, Any]], int]:
    columns = 2 if all(len(item["label"]) <= _LEGEND_SHORT for item in items) else 1
    column_w = (width - _PLOT_LEFT) / 2
    legend = []
    for i, item in enumerate(items):
        x = _PLOT_LEFT + (i % columns) * column_w
        y = top + (i // columns) * _LEGEND_ROW
        label = item["label"]
        legend.append(
            {
                **item,
                "short": label if len(label) <= _LEGEND_CHARS else label[: _LEGEND_CHARS - 1] + "…",
                "x1": round(x, 1),
                "x2": round(x + 26, 1),
                "y": y,
                "text_x": round(x + 32, 1),
                "text_y": y + 4,
                "marker": marker_path(item["shape"], x + 13, y, 3.5) if item.get("shape") else "",
            }
        )
    rows = math.ceil(len(items) / columns) if items else 0
    return legend, rows


def _curves(
    lipschitz: Sequence[dict[str, Any]],
    smoothing: Sequence[dict[str, Any]],
    claim_radii: Sequence[float],
) -> dict[str, Any] | None:
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
    x_top, x_step = _nice_top(highest)

    def to_x(radius: float) -> float:
        return round(_PLOT_LEFT + min(max(radius, 0.0), x_top) / x_top * _PLOT_WIDTH, 1)

    def to_y(value: float) -> float:
        return round(_PLOT_TOP + (1 - min(max(value, 0.0), 1.0)) * _PLOT_HEIGHT, 1)

    x_ticks, x_minor = _x_ticks([(v, _tick_label(v)) for v in _linear_ticks(x_top, x_step)], to_x)
    y_ticks = [{"y": to_y(v), "label": f"{v:g}"} for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    lines: list[dict[str, Any]] = []
    legend_items: list[dict[str, Any]] = []
    clean_lines: dict[float, dict[str, Any]] = {}
    for cert in drawable_l:
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
                            "title": f"{what}, radius {_eps_value(r)}: {v:.3f}",
                        }
                        for r, v in points
                    ]
                    if show_markers
                    else [],
                }
            )
            legend_items.append(
                {
                    "label": label,
                    "color": cert["color"],
                    "dashed": dashed,
                    "shape": shape,
                    "kind": "line",
                    "dotted": False,
                }
            )
        clean = cert["clean_raw"]
        if clean is not None:
            clean_lines.setdefault(round(clean, 6), {"value": clean, "ids": []})["ids"].append(
                cert["id"]
            )
    clean = [
        {
            "y": to_y(item["value"]),
            "label": f"clean pixel accuracy {item['value']:.3f}",
            "label_y": to_y(item["value"]) - 5,
        }
        for item in clean_lines.values()
    ]
    if clean:
        legend_items.append(
            {
                "label": "clean pixel accuracy (no perturbation)",
                "color": CLEAN_COLOR,
                "dashed": False,
                "dotted": True,
                "shape": "",
                "kind": "line",
            }
        )
    steps = []
    for cert in drawable_s:
        x, y = to_x(cert["radius"]), to_y(cert["pa"])
        label = (
            f"smoothing {cert['config_label']}: certified PA up to R {_eps_value(cert['radius'])}"
        )
        steps.append(
            {
                "series": f"{cert['id']}:smoothing",
                "label": label,
                "color": cert["color"],
                "points_attr": f"{_PLOT_LEFT},{y} {x},{y} {x},{to_y(0.0)}",
                "marker": marker_path("diamond", x, y, 5.0),
                "title": f"{label}: {cert['pa']:.3f}",
            }
        )
        legend_items.append(
            {
                "label": label,
                "color": cert["color"],
                "dashed": True,
                "shape": "diamond",
                "kind": "line",
                "dotted": False,
            }
        )
    claim_lines = []
    for radius in claim_radii:
        if radius <= x_top:
            claim_lines.append({"x": to_x(radius), "label": _eps_value(radius)})
    if claim_lines:
        legend_items.append(
            {
                "label": "radius stated by a certified claim",
                "color": CLAIM_RADIUS_COLOR,
                "dashed": False,
                "shape": "",
                "kind": "vertical",
                "dotted": False,
            }
        )
    width = _PLOT_LEFT + _PLOT_WIDTH + _PLOT_RIGHT
    bottom = _PLOT_TOP + _PLOT_HEIGHT
    legend_top = bottom + 58
    legend, rows = _legend(legend_items, legend_top, width)
    resolution = _resolution_note(c["raw"] for c in lipschitz)
    return {
        "width": width,
        "height": legend_top + rows * _LEGEND_ROW + 4,
        "plot_left": _PLOT_LEFT,
        "plot_right": _PLOT_LEFT + _PLOT_WIDTH,
        "plot_top": _PLOT_TOP,
        "plot_bottom": bottom,
        "plot_mid_x": _PLOT_LEFT + _PLOT_WIDTH / 2,
        "plot_mid_y": _PLOT_TOP + _PLOT_HEIGHT / 2,
        "x_title_y": bottom + 38,
        "x_title": "L2 radius ([0,1] pixel space)",
        "resolution": resolution,
        "y_title": "certified pixel accuracy / fraction",
        "x_ticks": x_ticks,
        "x_minor": x_minor,
        "y_ticks": y_ticks,
        "lines": lines,
        "clean": clean,
        "steps": steps,
        "claim_lines": claim_lines,
        "legend": legend,
    }


# -- certifications -----------------------------------------------------------------------
def _value_at(points: Sequence[tuple[float, float]], radius: float) -> float | None:
    for r, v in points:
        if _close(r, radius):
            return v
    return None


def _attach(
    claims: Sequence[tuple[int, Mapping[str, Any]]],
    certifier: str,
    match: Callable[[Mapping[str, Any]], bool],
) -> list[dict[str, str]]:
    out = []
    for index, claim in claims:
        if claim.get("kind") != "certified":
            continue
        evidence = _mapping(claim.get("evidence"))
        params = _mapping(claim.get("params"))
        if (evidence.get("certifier") or params.get("certifier")) != certifier:
            continue
        if match(evidence):
            out.append(_claim_ref(index, claim))
    return out


def _lipschitz_entry(
    index: int,
    entry: Mapping[str, Any],
    color: str,
    sources: _Sources,
    claims: Sequence[tuple[int, Mapping[str, Any]]],
    table_radii: Sequence[float],
) -> dict[str, Any]:
    entry_id = str(entry.get("id") or f"lipschitz {index + 1}")
    lipschitz = _mapping(entry.get("lipschitz"))
    source = sources.add(lipschitz, f"certification {entry_id}")
    value = _finite(lipschitz.get("value"))
    radii = _list(entry.get("radii"))
    pa = _series_points(radii, entry.get("certified_pixel_accuracy"))
    fraction = _series_points(radii, entry.get("certified_fraction"))
    finite_radii = sorted({r for r in (_finite(x) for x in radii) if r is not None})
    if finite_radii:
        radii_text = (
            f"{_eps_value(finite_radii[0])} – {_eps_value(finite_radii[-1])} "
            f"({len(finite_radii)} radii)"
            if len(finite_radii) > 1
            else _eps_value(finite_radii[0])
        )
    else:
        radii_text = NA
    at = [
        {
            "radius": _eps_value(r),
            "pa": _num(_value_at(pa, r)),
            "fraction": "" if _value_at(fraction, r) is None else _pct(_value_at(fraction, r)),
        }
        for r in table_radii
    ]

    def match(evidence: Mapping[str, Any]) -> bool:
        claimed = _finite(_mapping(evidence.get("lipschitz")).get("value"))
        return value is not None and claimed is not None and _close(claimed, value)

    clean = _finite(entry.get("clean_pixel_accuracy"))
    return {
        "raw": entry,
        "id": entry_id,
        "certifier": "Lipschitz",
        "color": color,
        "lipschitz": _sig(value, 6),
        "lipschitz_kind": source["kind"] if source else NA,
        "setting": f"L = {_sig(value, 6)}" + (f" ({source['kind']})" if source else ""),
        "setting_detail": f"κ = {_sig(entry.get('kappa'), 3)}"
        if entry.get("kappa") is not None
        else "",
        "radii": radii_text,
        "at": at,
        "clean": _num(clean),
        "clean_raw": clean,
        "extra": "",
        "num_samples": _count(entry.get("num_samples")),
        "resolution": _resolution_cell(entry.get("resolution")),
        "forward_passes": _count(entry.get("forward_passes")),
        "seconds": _seconds(entry.get("seconds")),
        "per_image": _per_image_time(entry.get("seconds"), entry.get("num_samples")),
        "claims": _attach(claims, "lipschitz", match),
        "pa_points": pa,
        "fraction_points": fraction,
    }


def _smoothing_entry(
    index: int,
    entry: Mapping[str, Any],
    color: str,
    claims: Sequence[tuple[int, Mapping[str, Any]]],
    table_radii: Sequence[float],
) -> dict[str, Any]:
    entry_id = str(entry.get("id") or f"smoothing {index + 1}")
    config = _mapping(entry.get("config"))
    radius = _finite(entry.get("radius"))
    pa = _finite(entry.get("certified_pixel_accuracy"))
    at = []
    for r in table_radii:
        if radius is None or pa is None:
            text = NA
        elif r <= radius + 1e-12:
            text = _num(pa)
        else:
            text = "0 (beyond R)"
        at.append({"radius": _eps_value(r), "pa": text, "fraction": ""})
    extra = []
    if entry.get("certified_miou") is not None:
        extra.append(f"certified mIoU {_num(entry.get('certified_miou'))}")
    if entry.get("abstain_rate") is not None:
        extra.append(f"abstained {_pct(entry.get('abstain_rate'))}")

    def match(evidence: Mapping[str, Any]) -> bool:
        return bool(config) and dict(_mapping(evidence.get("config"))) == dict(config)

    label = _smoothing_label(config)
    return {
        "raw": entry,
        "id": entry_id,
        "certifier": "Randomized smoothing",
        "color": color,
        "setting": label or NA,
        "setting_detail": "",
        "config_label": label or "config n/a",
        "radii": f"R = {_sig(radius)}" if radius is not None else NA,
        "radius": radius,
        "pa": pa,
        "at": at,
        "clean": NA,
        "clean_raw": None,
        "extra": " · ".join(extra),
        "num_samples": _count(entry.get("num_samples")),
        "resolution": _resolution_cell(entry.get("resolution")),
        "forward_passes": _count(entry.get("forward_passes")),
        "seconds": _seconds(entry.get("seconds")),
        "per_image": _per_image_time(entry.get("seconds"), entry.get("num_samples")),
        "claims": _attach(claims, "smoothing", match),
    }


# -- radius maps --------------------------------------------------------------------------
def _colour_bar(top: Any, gradient_id: str) -> dict[str, Any]:
    value = _finite(top)
    ticks = []
    if value is not None and value > 0:
        for fraction in (0.0, 0.5, 1.0):
            label = _sig(value * fraction, 3) if fraction else "0"
            if fraction == 1.0:
                label = "≥ " + label
            ticks.append(
                {
                    "x": round(8 + fraction * _BAR_WIDTH, 1),
                    "label": label,
                    "anchor": ("start", "middle", "end")[int(fraction * 2)],
                }
            )
    return {
        "id": gradient_id,
        "width": _BAR_WIDTH + 16,
        "height": _BAR_HEIGHT + 34,
        "bar_x": 8,
        "bar_width": _BAR_WIDTH,
        "bar_height": _BAR_HEIGHT,
        "stops": [{"offset": f"{o * 100:g}%", "color": c} for o, c in VIRIDIS_STOPS],
        "ticks": ticks,
        "known": bool(ticks),
        "max": _sig(value, 3),
    }


def _share_captions(raw: Any) -> str:
    shares = []
    for key, share in _mapping(raw).items():
        radius = _radius_value(key)
        if radius is None:
            continue
        shares.append((radius, f"{_pct(share)} beyond {_eps_value(radius)}"))
    return ", ".join(text for _, text in sorted(shares))


def _maps(lipschitz: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    blocks = []
    bars = 0
    for cert in lipschitz:
        examples = []
        for index, example in enumerate(_list(cert["raw"].get("examples"))):
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
                    "bar": _colour_bar(example.get("radius_max_shown"), f"cert-viridis-{bars}"),
                    "median": _sig(example.get("median_radius"), 3),
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
                    "examples": examples,
                }
            )
    return blocks


# -- soundness ----------------------------------------------------------------------------
def _subsample(points: Sequence[Any], limit: int) -> list[Any]:
    if len(points) <= limit:
        return list(points)
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)]


def _scatter(
    checks: Sequence[Mapping[str, Any]], colors: Mapping[str, str]
) -> dict[str, Any] | None:
    pairs: list[tuple[str, float, float]] = []
    for check in checks:
        attack = _text(check.get("attack"))
        for pair in _list(check.get("scatter")):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                continue
            cert, emp = _finite(pair[0]), _finite(pair[1])
            if cert is not None and emp is not None and cert >= 0 and emp >= 0:
                pairs.append((attack, cert, emp))
    if not pairs:
        return None
    below = [p for p in pairs if p[2] < p[1]]
    above = [p for p in pairs if p[2] >= p[1]]
    shown_below = _subsample(below, MAX_SCATTER_POINTS)
    shown_above = _subsample(above, MAX_SCATTER_POINTS - len(shown_below))
    x_top, x_step = _nice_top(max(p[1] for p in pairs), 5)
    y_top, y_step = _nice_top(max(p[2] for p in pairs), 5)

    def to_x(value: float) -> float:
        return round(_SC_LEFT + min(value, x_top) / x_top * _SC_SIZE, 1)

    def to_y(value: float) -> float:
        return round(_SC_TOP + (1 - min(value, y_top) / y_top) * _SC_SIZE, 1)

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
            "title": f"{attack}: certified radius {_eps_value(cert)}, empirical {_eps_value(emp)}",
        }
        for attack, cert, emp in shown_below
    ]
    diagonal = min(x_top, y_top)
    bottom = _SC_TOP + _SC_SIZE
    x_ticks, _ = _x_ticks([(v, _tick_label(v)) for v in _linear_ticks(x_top, x_step)], to_x)
    ratios = [p[1] / p[2] for p in pairs if p[2] > 0]
    legend_top = bottom + 56
    legend = []
    for i, item in enumerate(series):
        legend.append(
            {
                "label": f"{item['attack']} ({item['count']:,} pixels drawn)",
                "color": item["color"],
                "y": legend_top + i * _LEGEND_ROW,
                "red": False,
            }
        )
    if violations:
        legend.append(
            {
                "label": f"below the diagonal: certificate beaten ({len(below)})",
                "color": VIOLATION_COLOR,
                "y": legend_top + len(series) * _LEGEND_ROW,
                "red": True,
                "marker": marker_path(
                    "diamond", _SC_LEFT + 8, legend_top + len(series) * _LEGEND_ROW, 3.6
                ),
            }
        )
    return {
        "width": _SC_LEFT + _SC_SIZE + _SC_RIGHT + 30,
        "height": legend_top + len(legend) * _LEGEND_ROW + 4,
        "plot_left": _SC_LEFT,
        "plot_right": _SC_LEFT + _SC_SIZE,
        "plot_top": _SC_TOP,
        "plot_bottom": bottom,
        "plot_mid_x": _SC_LEFT + _SC_SIZE / 2,
        "plot_mid_y": _SC_TOP + _SC_SIZE / 2,
        "x_title_y": bottom + 36,
        "x_ticks": x_ticks,
        "y_ticks": [{"y": to_y(v), "label": _tick_label(v)} for v in _linear_ticks(y_top, y_step)],
        "diagonal": {"x1": to_x(0), "y1": to_y(0), "x2": to_x(diagonal), "y2": to_y(diagonal)},
        "diagonal_label": {"x": to_x(diagonal) + 4, "y": to_y(diagonal) + 4},
        "series": series,
        "violations": violations,
        "legend": legend,
        "legend_x": _SC_LEFT,
        "total": len(pairs),
        "shown": len(shown_below) + len(shown_above),
        "below": len(below),
        "same_scale": math.isclose(x_top, y_top),
        "median_from_points": _sig(_median(ratios), 3),
    }


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _check_row(check: Mapping[str, Any], eps: float | None, color: str) -> dict[str, Any]:
    flipped = _finite(check.get("flipped_certified"))
    metric = _finite(check.get("metric_violations"))
    norm = _finite(check.get("max_perturbation_norm"))
    return {
        "attack": _text(check.get("attack")),
        "color": color,
        "certified_pixels": _count(check.get("certified_pixels")),
        "flipped_certified": _count(flipped),
        "flipped_bad": flipped is not None and flipped > 0,
        "flipped_any": _count(check.get("flipped_any")),
        "metric_violations": _count(metric),
        "metric_bad": metric is not None and metric > 0,
        "max_norm": _sig(norm),
        "norm_over": norm is not None and eps is not None and norm > eps * (1 + 1e-3) + 1e-9,
        "tightness": _sig(check.get("tightness_median"), 3),
        # An attack that moved nothing tested nothing: say so rather than read as a pass.
        "idle": _finite(check.get("flipped_any")) == 0 or norm == 0,
        "pairs": len(_list(check.get("scatter"))),
    }


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
            text = _count(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = _sig(value, 6)
        else:
            text = _text(value) if not isinstance(value, Mapping | list) else fmt_any(value)
        rows.append({"label": label, "value": text})
    cert, norm = _finite(raw.get("certified_radius")), _finite(raw.get("perturbation_norm"))
    summary = ""
    if cert is not None and norm is not None:
        summary = (
            f"A perturbation of L2 norm {_sig(norm, 4)} changed the prediction of a pixel "
            f"certified up to {_sig(cert, 4)}"
            + (": the certificate is unsound." if norm < cert else ".")
        )
    return {"rows": rows, "files": _files(raw.get("files")), "summary": summary}


def _falsified(raw: Any, lipschitz: Mapping[str, Any]) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    return {
        "lower_bound": _sig(raw.get("lower_bound"), 6),
        "claimed": _sig(lipschitz.get("value"), 6),
        "method": _text(raw.get("method")),
        "files": _files(raw.get("files")),
    }


def _soundness_records(
    results: Mapping[str, Any], claims: Sequence[tuple[int, Mapping[str, Any]]]
) -> list[tuple[Mapping[str, Any], tuple[int, Mapping[str, Any]] | None]]:
    """Soundness entries with their claim; from the claims' evidence when none were recorded."""
    soundness = [(i, c) for i, c in claims if c.get("kind") == "certificate_soundness"]
    by_nodeid = {c["nodeid"]: (i, c) for i, c in soundness if isinstance(c.get("nodeid"), str)}
    recorded = _mapping(results.get("evaluations")).get("soundness")
    if isinstance(recorded, list):
        return [
            (entry, by_nodeid.get(entry["claim"]) if isinstance(entry.get("claim"), str) else None)
            for entry in recorded
            if isinstance(entry, Mapping)
        ]
    records: list[tuple[Mapping[str, Any], tuple[int, Mapping[str, Any]] | None]] = []
    for index, claim in soundness:
        nodeid = claim.get("nodeid") or claim.get("id")
        evidence = _mapping(claim.get("evidence"))
        if not evidence:
            continue
        files = _mapping(evidence.get("files"))
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


def _soundness(
    records: Sequence[tuple[Mapping[str, Any], tuple[int, Mapping[str, Any]] | None]],
    sources: _Sources,
) -> list[dict[str, Any]]:
    attack_colors: dict[str, str] = {}
    # Vermillion reads as red next to the violations: leave it out of the scatter palette.
    palette = [c for c in PALETTE if c != "#D55E00"]
    blocks = []
    for number, (entry, claim) in enumerate(records):
        eps = _finite(entry.get("eps"))
        ref = _claim_ref(*claim) if claim is not None else None
        title = str(
            entry.get("claim") or (ref["nodeid"] if ref else f"soundness check {number + 1}")
        )
        lipschitz = _mapping(entry.get("lipschitz"))
        source = sources.add(lipschitz, f"soundness {title}") if lipschitz else None
        checks = [c for c in _list(entry.get("checks")) if isinstance(c, Mapping)]
        for check in checks:
            attack = _text(check.get("attack"))
            attack_colors.setdefault(attack, palette[len(attack_colors) % len(palette)])
        violations = _finite(entry.get("violations"))
        counterexample = _counterexample(entry.get("counterexample"))
        falsified = _falsified(entry.get("falsified"), lipschitz)
        tightness = [
            {"attack": _text(c.get("attack")), "value": _sig(c.get("tightness_median"), 3)}
            for c in checks
            if _finite(c.get("tightness_median")) is not None
        ]
        blocks.append(
            {
                "anchor": f"soundness-{number + 1}",
                "title": title,
                "claim": ref,
                "eps": _eps_value(eps) if eps is not None else NA,
                "violations": _count(violations),
                "violated": bool(violations) or counterexample is not None or falsified is not None,
                "lipschitz": f"L = {_sig(lipschitz.get('value'), 6)}"
                + (f" ({source['kind']})" if source else ""),
                "num_samples": _count(entry.get("num_samples")),
                "seconds": _seconds(entry.get("seconds")),
                "checks": [
                    _check_row(c, eps, attack_colors[_text(c.get("attack"))]) for c in checks
                ],
                "scatter": _scatter(checks, attack_colors),
                "tightness": tightness,
                "counterexample": counterexample,
                "falsified": falsified,
            }
        )
    return blocks


# -- the section --------------------------------------------------------------------------
def build_certificates(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Context of ``_certificates.html.j2``, or ``None`` when nothing was certified."""
    entries = [
        entry
        for entry in _list(_mapping(results.get("evaluations")).get("certificates"))
        if isinstance(entry, Mapping)
    ]
    claims = _claims(results)
    soundness_records = _soundness_records(results, claims)
    claims_with_evidence = [c for _, c in claims if _mapping(c.get("evidence"))]
    if not entries and not soundness_records and not claims_with_evidence:
        return None
    claim_radii = _claim_radii(claims)
    table_radii = claim_radii or list(_DEFAULT_TABLE_RADII)
    sources = _Sources()
    lipschitz: list[dict[str, Any]] = []
    smoothing: list[dict[str, Any]] = []
    others = 0
    for index, entry in enumerate(entries):
        color = PALETTE[(len(lipschitz) + len(smoothing)) % len(PALETTE)]
        if entry.get("certifier") == "smoothing":
            smoothing.append(_smoothing_entry(index, entry, color, claims, table_radii))
        elif entry.get("certifier") == "lipschitz" or entry.get("lipschitz") is not None:
            lipschitz.append(_lipschitz_entry(index, entry, color, sources, claims, table_radii))
        else:
            others += 1
    # Constants named only by certified claims (no certification recorded with them).
    for _, claim in claims:
        if claim.get("kind") == "certified":
            evidence = _mapping(claim.get("evidence"))
            if evidence.get("lipschitz") is not None:
                nodeid = str(claim.get("nodeid") or claim.get("id") or "claim")
                sources.add(evidence["lipschitz"], f"claim {nodeid}")
    lipschitz_claims = _lipschitz_claims(claims, sources)
    soundness = _soundness(soundness_records, sources)
    rows = [
        {k: v for k, v in cert.items() if k not in ("raw", "pa_points", "fraction_points")}
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
        "chart": _curves(lipschitz, smoothing, claim_radii),
        "table_radii": [_eps_value(r) for r in table_radii],
        "table_radii_from_claims": bool(claim_radii),
        "rows": rows,
        "maps": _maps(lipschitz),
        "soundness": soundness,
        "beaten": [{"anchor": b["anchor"], "title": b["title"]} for b in beaten],
    }

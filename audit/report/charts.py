"""Chart primitives for the report's SVG: palettes, colour maps, markers, axes, ticks, legends.

Charts are computed here as plain numbers and strings (coordinates in SVG user units, pixels at
100 % zoom) and drawn by the partials, so the page needs no script and no external asset.  The
section builders (clean, attacks, certificates, soundness) choose what to plot; these helpers
decide where it goes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audit.report.format import finite, fmt_short, fmt_sig, fmt_tick

#: Okabe & Ito's colour-blind safe palette, yellow left out (unreadable on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
#: Marker shapes cycle independently of colours, so lines differ by more than hue.
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down", "plus")
#: viridis at five stops, as the record draws the radius maps (audit.record.entries._VIRIDIS;
#: tests/test_report_certificates.py keeps the two equal)
VIRIDIS_STOPS = (
    (0.0, "#440154"),
    (0.25, "#3b528b"),
    (0.5, "#21918c"),
    (0.75, "#5ec962"),
    (1.0, "#fde725"),
)
#: Ticks of an axis from 0 to 1 (scores, accuracies, fractions).
UNIT_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
MARKER_R = 4.5
LEGEND_ROW = 18
_FALLBACK_RGB = (160, 160, 160)


# -- colours ------------------------------------------------------------------------------
def palette_rgb(value: Any) -> tuple[int, int, int]:
    """A recorded palette entry as an RGB triple; anything malformed becomes neutral grey."""
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return (value[0], value[1], value[2])
    return _FALLBACK_RGB


def css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def heat(fraction: float) -> tuple[str, str]:
    """Background and text colour of a table cell holding ``fraction`` (blue, deeper = more)."""
    alpha = round(0.08 + 0.92 * fraction, 3) if fraction > 0 else 0.0
    background = f"rgba(31, 88, 170, {alpha})"
    return background, ("#fff" if fraction >= 0.5 else "#1b1f24")


def colour_bar(top: Any, gradient_id: str, *, width: int = 220, height: int = 12) -> dict[str, Any]:
    """A horizontal viridis colour bar from 0 to ``top`` (``≥ top`` at the right end)."""
    value = finite(top)
    ticks = []
    if value is not None and value > 0:
        for fraction in (0.0, 0.5, 1.0):
            label = fmt_sig(value * fraction, 3) if fraction else "0"
            if fraction == 1.0:
                label = "≥ " + label
            ticks.append(
                {
                    "x": round(8 + fraction * width, 1),
                    "label": label,
                    "anchor": ("start", "middle", "end")[int(fraction * 2)],
                }
            )
    return {
        "id": gradient_id,
        "width": width + 16,
        "height": height + 34,
        "bar_x": 8,
        "bar_width": width,
        "bar_height": height,
        "stops": [{"offset": f"{o * 100:g}%", "color": c} for o, c in VIRIDIS_STOPS],
        "ticks": ticks,
        "known": bool(ticks),
        "max": fmt_sig(value, 3),
    }


# -- markers ------------------------------------------------------------------------------
def _r(value: float) -> str:
    return f"{value:.1f}"


def marker_path(shape: str, x: float, y: float, r: float = MARKER_R) -> str:
    """SVG path data for a marker of ``shape`` centred on ``(x, y)``."""
    if shape == "square":
        s = r * 0.9
        return f"M{_r(x - s)},{_r(y - s)}h{_r(2 * s)}v{_r(2 * s)}h{_r(-2 * s)}Z"
    if shape in ("triangle", "triangle-down"):
        sign = 1 if shape == "triangle" else -1
        tip, base, half = y - sign * r * 1.2, y + sign * r * 0.8, r * 1.1
        return f"M{_r(x)},{_r(tip)}L{_r(x + half)},{_r(base)}L{_r(x - half)},{_r(base)}Z"
    if shape == "diamond":
        d = r * 1.25
        return f"M{_r(x)},{_r(y - d)}L{_r(x + d)},{_r(y)}L{_r(x)},{_r(y + d)}L{_r(x - d)},{_r(y)}Z"
    if shape == "plus":
        a, t = r * 1.2, r * 0.42
        points = [
            (-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t),
            (t, a), (-t, a), (-t, t), (-a, t), (-a, -t), (-t, -t),
        ]  # fmt: skip
        return "M" + "L".join(f"{_r(x + dx)},{_r(y + dy)}" for dx, dy in points) + "Z"
    return (
        f"M{_r(x - r)},{_r(y)}a{_r(r)},{_r(r)} 0 1,0 {_r(2 * r)},0"
        f"a{_r(r)},{_r(r)} 0 1,0 {_r(-2 * r)},0Z"
    )


# -- axes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlotArea:
    """The plotting rectangle of a chart and the margins around it."""

    left: int
    width: int
    top: int
    height: int
    right: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def outer_width(self) -> int:
        return self.left + self.width + self.right

    def frame(self, x_title_gap: int) -> dict[str, float]:
        """The partials' axis geometry: plot edges, midpoints and the x title's baseline."""
        return {
            "plot_left": self.left,
            "plot_right": self.left + self.width,
            "plot_top": self.top,
            "plot_bottom": self.bottom,
            "plot_mid_x": self.left + self.width / 2,
            "plot_mid_y": self.top + self.height / 2,
            "x_title_y": self.bottom + x_title_gap,
        }

    def linear_x(self, top: float) -> Callable[[float], float]:
        """``0 .. top`` left to right; values outside are clamped to the plot."""
        return lambda value: round(self.left + _clamped(value, top) * self.width, 1)

    def linear_y(self, top: float) -> Callable[[float], float]:
        """``0 .. top`` bottom to top; values outside are clamped to the plot."""
        return lambda value: round(self.top + (1 - _clamped(value, top)) * self.height, 1)

    def legend_below(
        self,
        items: Sequence[dict[str, Any]],
        *,
        gap: int,
        short_at: int,
        max_chars: int,
        marker_r: float = MARKER_R,
    ) -> tuple[list[dict[str, Any]], int]:
        """Legend entries ``gap`` below the plot, and the chart's height that leaves room for.

        Each entry is its item plus a line sample, a marker (none for an item without a
        ``shape``) and the label, cut to ``max_chars`` (the full one stays in ``label`` for a
        tooltip).  Two columns when every label has at most ``short_at`` characters, else one.
        """
        top = self.bottom + gap
        columns = 2 if all(len(item["label"]) <= short_at for item in items) else 1
        column_w = (self.outer_width - self.left) / 2
        entries = []
        for i, item in enumerate(items):
            x = self.left + (i % columns) * column_w
            y = top + (i // columns) * LEGEND_ROW
            entries.append(
                {
                    **item,
                    "short": fmt_short(item["label"], max_chars),
                    "x1": round(x, 1),
                    "x2": round(x + 26, 1),
                    "y": y,
                    "text_x": round(x + 32, 1),
                    "text_y": y + 4,
                    "marker": marker_path(item["shape"], x + 13, y, marker_r)
                    if item.get("shape")
                    else "",
                }
            )
        rows = math.ceil(len(items) / columns) if items else 0
        return entries, top + rows * LEGEND_ROW + 4


def _clamped(value: float, top: float) -> float:
    return min(max(value, 0.0), top) / top


def spaced_ticks(
    values: Sequence[tuple[float, str]], to_x: Callable[[float], float]
) -> tuple[list[dict[str, Any]], list[float]]:
    """Labelled x ticks that do not overlap, and unlabelled marks for the values between."""
    labelled: list[dict[str, Any]] = []
    minor: list[float] = []
    for value, text in values:
        x = to_x(value)
        width = len(text) * 6.2 + 8
        if labelled and x - labelled[-1]["x"] < (labelled[-1]["w"] + width) / 2:
            minor.append(x)
            continue
        labelled.append({"x": x, "w": width, "label": text})
    return labelled, minor


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def nice_top(value: float, target: int = 6) -> tuple[float, float]:
    """An axis end at or above ``value`` on a round step, and that step."""
    value = value if value > 0 else 0.1
    step = _nice_step(value, target)
    top = math.ceil(value / step - 1e-9) * step
    return top, step


def linear_ticks(top: float, step: float) -> list[float]:
    """``0, step, 2 step, ... top``, rounded clear of float noise."""
    count = round(top / step)
    return [round(i * step, 10) for i in range(count + 1)]


def round_ticks(
    top: float, step: float, to_x: Callable[[float], float]
) -> tuple[list[dict[str, Any]], list[float]]:
    """:func:`spaced_ticks` at ``0, step, ... top`` (a linear axis from :func:`nice_top`)."""
    return spaced_ticks([(v, fmt_tick(v)) for v in linear_ticks(top, step)], to_x)

"""Pure value formatters for the report: one value in, one display string out.

Nothing here knows about results.json's layout; the section builders decide which value to
format and these decide how it reads on the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

_MISSING = "—"
_FALLBACK_COLOR = (160, 160, 160)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt_number(value: Any) -> str:
    """A measured value for display: 3 decimals for scores, separators for counts."""
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 0.01 <= abs(value) < 1e4:
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def fmt_bound(value: Any) -> str:
    """A threshold as the user wrote it (``0.75``, not ``0.750``)."""
    return format(value, "g") if _is_number(value) else str(value)


def fmt_threshold(threshold: Any) -> str:
    """``{"min": 0.75, "max": None}`` -> ``">= 0.75"``; both bounds joined with ``and``."""
    if not isinstance(threshold, Mapping):
        return _MISSING if threshold is None else str(threshold)
    parts = []
    if threshold.get("min") is not None:
        parts.append(f">= {fmt_bound(threshold['min'])}")
    if threshold.get("max") is not None:
        parts.append(f"<= {fmt_bound(threshold['max'])}")
    return " and ".join(parts) or _MISSING


def fmt_interval(interval: Any) -> str:
    """``"95% CI [0.790, 0.830]"``, or an empty string when there is no interval."""
    if not isinstance(interval, Mapping):
        return ""
    low, high = interval.get("low"), interval.get("high")
    if low is None and high is None:
        return ""
    confidence = interval.get("confidence")
    label = f"{confidence * 100:g}% CI" if _is_number(confidence) else "CI"
    return f"{label} [{fmt_number(low)}, {fmt_number(high)}]"


def fmt_interval_method(interval: Any) -> str:
    if not isinstance(interval, Mapping):
        return ""
    parts = []
    if interval.get("method"):
        parts.append(str(interval["method"]))
    if _is_number(interval.get("n_resamples")):
        parts.append(f"{interval['n_resamples']:,} resamples")
    return ", ".join(parts)


def fmt_any(value: Any) -> str:
    """Provenance values: scalars as-is, lists and mappings as compact JSON."""
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def fmt_resolution(value: Any) -> str:
    if isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_number, value)):
        return f"{value[0]} × {value[1]} (H × W)"
    return fmt_any(value)


def fmt_resize(input_size: Any, output_size: Any, factor: Any) -> str | None:
    """``"32 × 64 logits upsampled ×4 (bilinear) to the 128 × 256 input"``; ``None`` when
    the logits were not resized (or the sizes are unknown).  A per-side factor means the
    resize was accepted through the model's ``accept_resize`` metadata."""
    sizes = (input_size, output_size)
    if not all(isinstance(v, list | tuple) and len(v) == 2 for v in sizes) or not all(
        _is_number(n) for v in sizes for n in v
    ):
        return None
    if list(input_size) == list(output_size):
        return None
    smaller = output_size[0] <= input_size[0] and output_size[1] <= input_size[1]
    how = "upsampled" if smaller else "resized"
    if _is_number(factor):
        by = f"×{fmt_bound(factor)} (bilinear)"
    elif isinstance(factor, list | tuple) and len(factor) == 2:
        by = (
            f"×{fmt_bound(factor[0])} × {fmt_bound(factor[1])} (bilinear, accepted by the "
            "model's accept_resize metadata)"
        )
    else:
        by = "(bilinear)"
    return (
        f"{output_size[0]} × {output_size[1]} logits {how} {by} to the "
        f"{input_size[0]} × {input_size[1]} input"
    )


def fmt_duration(value: Any) -> str:
    if not _is_number(value):
        return _MISSING
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds} s"


def fmt_percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}"


def _color(value: Any) -> tuple[int, int, int]:
    """A palette entry as an RGB triple; anything malformed becomes neutral grey."""
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return (value[0], value[1], value[2])
    return _FALLBACK_COLOR


def _css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"

"""Pure value formatters for the report: one value in, one display string out.

Nothing here knows about results.json's layout; the section builders decide which value to
format and these decide how it reads on the page.  Two placeholders: :data:`MISSING` (a dash)
where the cover and the claims table have no value, :data:`NA` (``n/a``) in the attack and
certificate tables, where a value may be missing, null or NaN in a partial record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

MISSING = "—"
NA = "n/a"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None`` (null, NaN, text)."""
    if is_number(value) and math.isfinite(value):
        return float(value)
    return None


def fmt_number(value: Any) -> str:
    """A measured value for display: at least 3 decimals for scores, up to 6 significant
    digits where they differ (1.0002 must not read 1.000), separators for counts."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 0.01 <= abs(value) < 1e4:
            short = f"{value:.6g}"
            decimals = len(short.partition(".")[2])
            return short if decimals >= 3 else f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def fmt_num(value: Any) -> str:
    """A score or count for a table; anything missing or non-finite reads ``n/a``."""
    return fmt_number(value) if finite(value) is not None else NA


def fmt_bound(value: Any) -> str:
    """A threshold as the user wrote it (``0.75``, not ``0.750``)."""
    return format(value, "g") if is_number(value) else str(value)


def fmt_threshold(threshold: Any) -> str:
    """``{"min": 0.75, "max": None}`` -> ``">= 0.75"``; both bounds joined with ``and``."""
    if not isinstance(threshold, Mapping):
        return MISSING if threshold is None else str(threshold)
    parts = []
    if threshold.get("min") is not None:
        parts.append(f">= {fmt_bound(threshold['min'])}")
    if threshold.get("max") is not None:
        parts.append(f"<= {fmt_bound(threshold['max'])}")
    return " and ".join(parts) or MISSING


def fmt_interval(interval: Any) -> str:
    """``"95% CI [0.790, 0.830]"``, or an empty string when there is no interval."""
    if not isinstance(interval, Mapping):
        return ""
    low, high = interval.get("low"), interval.get("high")
    if low is None and high is None:
        return ""
    confidence = interval.get("confidence")
    label = f"{confidence * 100:g}% CI" if is_number(confidence) else "CI"
    return f"{label} [{fmt_number(low)}, {fmt_number(high)}]"


def fmt_interval_method(interval: Any) -> str:
    if not isinstance(interval, Mapping):
        return ""
    parts = []
    if interval.get("method"):
        parts.append(str(interval["method"]))
    if is_number(interval.get("n_resamples")):
        parts.append(f"{interval['n_resamples']:,} resamples")
    return ", ".join(parts)


def fmt_any(value: Any) -> str:
    """Provenance values: scalars as-is, lists and mappings as compact JSON."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def fmt_text(value: Any) -> str:
    """User or record text for a table; missing or empty reads ``n/a``."""
    return NA if value is None or value == "" else str(value)


def fmt_params(params: Mapping[str, Any]) -> str:
    """``{"steps": 20, "restarts": 1}`` -> ``"steps=20, restarts=1"`` (canonical order kept).

    Parameters left at ``None`` mean "the attack's own schedule" and are not shown.
    """
    return ", ".join(
        f"{key}={fmt_any(value)}" for key, value in params.items() if value is not None
    )


def fmt_short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis, for labels in charts."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_size(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and all(map(is_number, value))


def fmt_resolution(value: Any) -> str:
    if _is_size(value):
        return f"{value[0]} × {value[1]} (H × W)"
    return fmt_any(value)


def fmt_compact_resolution(value: Any) -> str:
    """``"128×256"`` for a table cell; ``n/a`` when not recorded."""
    if _is_size(value):
        return f"{value[0]}×{value[1]}"
    return NA if value is None else fmt_any(value)


def fmt_resize(input_size: Any, output_size: Any, factor: Any) -> str | None:
    """``"32 × 64 logits upsampled ×4 (bilinear) to the 128 × 256 input"``; ``None`` when
    the logits were not resized (or the sizes are unknown).  A per-side factor means the
    resize was accepted through the model's ``accept_resize`` metadata."""
    sizes = (input_size, output_size)
    if not all(isinstance(v, list | tuple) and len(v) == 2 for v in sizes) or not all(
        is_number(n) for v in sizes for n in v
    ):
        return None
    if list(input_size) == list(output_size):
        return None
    smaller = output_size[0] <= input_size[0] and output_size[1] <= input_size[1]
    how = "upsampled" if smaller else "resized"
    if is_number(factor):
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
    if not is_number(value):
        return MISSING
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds} s"


def _short_time(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def fmt_seconds(value: Any) -> str:
    """A short time: ``"12.3 ms"`` below a second, ``"4.56 s"`` above; ``n/a`` if unknown."""
    number = finite(value)
    return NA if number is None else _short_time(number)


def fmt_per_image(seconds: Any, images: Any) -> str:
    """``seconds`` spread over ``images``, written as :func:`fmt_seconds` does."""
    total, count = finite(seconds), finite(images)
    if total is None or count is None or count <= 0:
        return NA
    return _short_time(total / count)


def fmt_percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}"


def fmt_pct(value: Any) -> str:
    """A fraction as ``"12.3%"``; ``n/a`` when missing or not finite."""
    number = finite(value)
    return NA if number is None else fmt_percent(number) + "%"


def fmt_sig(value: Any, digits: int = 4) -> str:
    """A constant or radius with ``digits`` significant digits; ``n/a`` when not finite."""
    number = finite(value)
    return NA if number is None else f"{number:.{digits}g}"


def fmt_count(value: Any) -> str:
    """A count with separators (``12,345``); a fractional one with 3 significant digits."""
    number = finite(value)
    if number is None:
        return NA
    return f"{int(number):,}" if number == int(number) else f"{number:,.3g}"


def fmt_eps(value: float) -> str:
    """An epsilon or radius as a plain number, 4 significant digits."""
    return f"{value:.4g}"


def fmt_radius(value: Any, norm: Any, *, short: bool = False) -> str:
    """A radius as a number; Linf radii also in 255ths (alone when ``short``)."""
    number = finite(value)
    if number is None:
        return NA
    if norm != "linf":
        return fmt_eps(number)
    in_255 = f"{number * 255:.3g}/255"
    return in_255 if short else f"{fmt_eps(number)} ({in_255})"


def fmt_tick(value: float) -> str:
    """An axis tick on a round step, without float noise (``0.30000000000000004`` -> 0.3)."""
    return f"{round(value, 10):g}"


def fmt_href(path: Any) -> str | None:
    """A relative link into the report folder, or ``None`` for anything else (URLs, absolute)."""
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")):
        return None
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or ".." in path.replace("\\", "/").split("/"):
        return None
    return quote(path, safe="/._-~")

"""Threat models: a norm and an epsilon in [0, 1] pixel space.

Epsilons are written as fractions (``"4/255"``) or floats (``0.0157``); the norm is always
explicit, because "eps = 0.1" means nothing without one.  The text the user wrote is kept
for ids and messages, the float for computation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

NORMS = ("linf", "l2")
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Epsilon:
    """An epsilon as written (``text``) and as a number (``value``)."""

    value: float
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ThreatModel:
    norm: str
    eps: Epsilon

    @property
    def label(self) -> str:
        """``linf-4/255``: the form used in item ids."""
        return f"{self.norm}-{self.eps.text}"

    def describe(self) -> str:
        return f"{self.norm} eps={self.eps.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps.value, "eps_text": self.eps.text}


def parse_epsilon(raw: Any) -> Epsilon:
    """``"4/255"``, ``"0.01"``, ``0.01`` or ``0`` -> :class:`Epsilon`; ``ValueError`` otherwise."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a number or a fraction such as '4/255', got {raw!r}")
    if isinstance(raw, int | float):
        # repr is the shortest text that reads back as the same float, so ids and results
        # can be parsed again without drift
        value, text = float(raw), repr(raw)
    elif isinstance(raw, str):
        match = _FRACTION.match(raw)
        if match:
            denominator = float(match[2])
            if denominator == 0:
                raise ValueError(f"epsilon {raw!r} divides by zero")
            value = float(match[1]) / denominator
            text = f"{match[1]}/{match[2]}"
        else:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(
                    f"expected a number or a fraction such as '4/255', got {raw!r}"
                ) from None
            text = raw.strip()
    else:
        raise ValueError(
            f"expected a number or a fraction such as '4/255', got {raw!r} ({type(raw).__name__})"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {raw!r}")
    return Epsilon(value=value, text=text)


def parse_norm(raw: Any) -> str:
    if not isinstance(raw, str) or raw.lower() not in NORMS:
        raise ValueError(f"expected one of {', '.join(NORMS)}, got {raw!r}")
    return raw.lower()

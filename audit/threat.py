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


#: the largest Linf epsilon with a meaning: pixels lie in [0, 1], so a ball of radius 1
#: already reaches every image
LINF_MAX = 1.0


def epsilon_problem(norm: str, eps: Epsilon) -> str | None:
    """Why ``eps`` is no threat model in ``norm`` whatever the images, or ``None``.

    Only Linf has a bound independent of the resolution; an L2 radius is checked against
    the images once their size is known (:func:`radius_beyond_image`).
    """
    if norm != "linf" or eps.value <= LINF_MAX:
        return None
    hint = f"; did you mean '{eps.text}/255'?" if "/" not in eps.text else ""
    return (
        f"Linf epsilon {eps.text} is above {LINF_MAX:g}: pixel values lie in [0, 1], so an "
        f"Linf ball of radius {LINF_MAX:g} already contains every image and the claim would "
        f"say nothing{hint}"
    )


def image_diameter(resolution: tuple[int, int], channels: int = 3) -> float:
    """L2 distance from the all-black to the all-white image, sqrt(C*H*W): no two images of
    ``resolution`` in [0, 1] are further apart."""
    height, width = resolution
    return math.sqrt(channels * height * width)


def radius_beyond_image(
    threat: ThreatModel, resolution: tuple[int, int], channels: int = 3
) -> str | None:
    """Why an L2 ``threat`` is larger than images of ``resolution`` allow, or ``None``."""
    if threat.norm != "l2":
        return None
    diameter = image_diameter(resolution, channels)
    if threat.eps.value <= diameter:
        return None
    height, width = resolution
    return (
        f"L2 radius {threat.eps.text} exceeds the diameter of {height}x{width} images in "
        f"[0, 1]: sqrt({channels}*{height}*{width}) = {diameter:.4g}, the L2 distance from "
        "an all-black to an all-white image; every image lies within it, so the claim would "
        f"say nothing; state a radius of at most {diameter:.4g} at this resolution"
    )

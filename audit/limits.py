"""Ceilings on the work one claim may ask for, and its wall-clock budget.

Every cost parameter of every claim kind is bounded here, in one table, and checked when the
suite is parsed: ``steps = 1000000000`` is far more likely a typo than a plan, and without a
ceiling it would run until killed.  A claim that means it says so with ``allow_large = true``
(next to the number, where a reviewer of the suite sees it).  There is deliberately no setting
that lifts every ceiling at once: it would let every typo through with the one large value it
was meant for; ``claim_timeout`` bounds the wall-clock time of every claim instead.

Torch-free: suites are validated at collection time, before any model loads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from audit.errors import ConfigError


class ClaimLocation(Protocol):
    """Where a claim is, for errors (:class:`audit.claims.base.Where` is one)."""

    def error(self, message: str, key: str | None = None) -> ConfigError: ...


@dataclass(frozen=True)
class Ceiling:
    """The largest value a cost parameter may take without ``allow_large``."""

    limit: int
    #: what the number counts, for messages and the documentation
    counts: str
    #: the key holds a list, whose length is bounded (a single value is not counted)
    of_list: bool = False


#: claim key -> its ceiling; a list-valued key (``eps``, ``attacks``) is bounded in length.
#: ``samples`` is no claim key: it bounds the per-step sample counts of library attacks
#: (see :data:`PARAM_CEILINGS`).  Each limit is several times the largest value published
#: protocols use (SEA: 300 iterations; adv-lib's minimal-norm attacks: 500 to 1000; SegCertify:
#: n = 1000, n0 = 100), so a real audit never needs ``allow_large``.
CEILINGS: dict[str, Ceiling] = {
    "steps": Ceiling(10_000, "attack iterations"),
    "min_norm_steps": Ceiling(10_000, "minimal-norm attack iterations"),
    "restarts": Ceiling(100, "attack restarts"),
    "radius_steps": Ceiling(1_024, "points on each path (a forward pass each)"),
    "search_examples": Ceiling(10_000, "search directions (a forward pass each)"),
    "n": Ceiling(100_000, "noisy samples per image"),
    "n0": Ceiling(10_000, "selection samples per image"),
    "attacks": Ceiling(16, "attacks in one claim", of_list=True),
    "eps": Ceiling(64, "epsilons in one sweep (an item each)", of_list=True),
    "samples": Ceiling(1_000, "gradient samples per attack step"),
    # Hypothesis searches (corruption_search, invariance): each example is a forward pass
    # over the searched images, and shrinking adds a few dozen more
    "max_examples": Ceiling(10_000, "search examples (a forward pass each)"),
    "search_images": Ceiling(1_024, "images each search example is measured on"),
    "severity": Ceiling(64, "severities in one corruption sweep (an item each)", of_list=True),
}

#: keyword arguments of library attacks (a claim's ``params`` table) that count work -> the
#: ceiling that bounds them: torchattacks, foolbox and adv-lib name their iteration counts
#: differently, and EOTPGD (``eot_iter``), VMIFGSM/VNIFGSM (``N``) and SINIFGSM (``m``)
#: multiply every step by a number of samples
PARAM_CEILINGS: dict[str, str] = {
    "steps": "steps",
    "num_steps": "steps",
    "max_iter": "steps",
    "n_iter": "steps",
    "nb_iter": "steps",
    "iterations": "steps",
    "iters": "steps",
    "restarts": "restarts",
    "n_restarts": "restarts",
    "num_restarts": "restarts",
    "eot_iter": "samples",
    "N": "samples",
    "m": "samples",
}

#: claim keys every kind accepts for bounded work
LIMIT_KEYS: dict[str, str] = {
    "allow_large": "true to accept cost parameters above their ceilings (docs/claims.md)",
    "timeout": "wall-clock budget of the claim in seconds; past it the claim is an error",
}


def _size(value: Any, ceiling: Ceiling) -> float | None:
    """The magnitude a ceiling bounds: a number itself, a list its length."""
    if ceiling.of_list:
        return len(value) if isinstance(value, list) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None  # a wrong type is the kind's to report, with the expected type


def check_ceilings(raw: Mapping[str, Any], where: ClaimLocation) -> None:
    """Refuse any cost parameter of ``raw`` (one claim table) above its ceiling, unless the
    claim says ``allow_large = true``."""
    allow = raw.get("allow_large", False)
    if not isinstance(allow, bool):
        raise where.error(f"expected true or false, got {allow!r}", key="allow_large")
    if allow:
        return
    found = [(key, key, raw[key]) for key in CEILINGS if key in raw]
    extra = raw.get("params")
    if isinstance(extra, Mapping):
        found += [
            (f"params.{key}", PARAM_CEILINGS[key], value)
            for key, value in extra.items()
            if key in PARAM_CEILINGS
        ]
    for key, ceiling_name, value in found:
        ceiling = CEILINGS[ceiling_name]
        size = _size(value, ceiling)
        if size is None or not size > ceiling.limit:
            continue
        given = f"{len(value)} entries" if isinstance(value, list) else f"{value!r}"
        raise where.error(
            f"{given} is above the ceiling of {ceiling.limit:,} {ceiling.counts}, which guards "
            "against runs that never end; if this is meant, add allow_large = true to the "
            "claim (ceilings are listed in docs/claims.md)",
            key=key,
        )


def parse_timeout(raw: Mapping[str, Any], where: ClaimLocation) -> float | None:
    """The claim's ``timeout`` in seconds (a finite number > 0), or ``None``."""
    return optional_number(raw, "timeout", where, zero_allowed=False, what="a number of seconds")


def optional_number(
    raw: Mapping[str, Any], key: str, where: ClaimLocation, *, zero_allowed: bool, what: str
) -> float | None:
    """``raw[key]`` as a finite number > 0 (>= 0 if ``zero_allowed``), or ``None``."""
    value = raw.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero_allowed)
    ):
        bound = ">= 0" if zero_allowed else "> 0"
        raise where.error(f"expected {what} {bound}, got {value!r}", key=key)
    return float(value)

"""Checks the claim kinds share, each worded once: metric names, epsilon lists, whole numbers,
and the sweep an ``eps`` list expands into.

Torch-free, like :mod:`audit.suite`: a malformed claim is reported at collection time, before
any model loads.  Every check raises :meth:`Where.error`, naming the file, claim and key.

A sweep is three parameters (:func:`sweep_params`): ``norm``, ``eps`` (the item's value) and
``_sweep`` (every value of the list, as written; internal, not shown in reports).  A kind that
parses them derives from :class:`SweepKind` and becomes one item per value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

from audit.claims.base import ClaimKind, ClaimSpec, Where
from audit.limits import optional_number
from audit.threat import Epsilon, ThreatModel, epsilon_problem, parse_epsilon

T = TypeVar("T")

#: how a missing ``eps`` is asked for, by what its values are called
_EXAMPLES = {"epsilon": "an epsilon such as '4/255'", "radius": "an L2 radius such as 0.1"}


def checked(parse: Callable[[Any], T], value: Any, where: Where, key: str) -> T:
    """``parse(value)``, with a ``ValueError`` it raises turned into the error of ``key``."""
    try:
        return parse(value)
    except ValueError as exc:
        raise where.error(str(exc), key=key) from None


def required(raw: Mapping[str, Any], key: str, where: Where, missing: str) -> Any:
    """``raw[key]``; where it is not given, the error of ``key`` with the message ``missing``."""
    if key not in raw:
        raise where.error(missing, key=key)
    return raw[key]


def whole_number(
    raw: Mapping[str, Any], key: str, where: Where, *, default: int | None = None, low: int = 1
) -> int:
    """``raw[key]`` (``default`` where it is not given), an ``int`` of at least ``low``."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise where.error(f"expected a whole number >= {low}, got {value!r}", key=key)
    return value


def parse_tolerance(raw: Mapping[str, Any], where: Where) -> float | None:
    """The claim's ``tolerance`` against a baseline run (a finite number >= 0), or ``None``."""
    return optional_number(raw, "tolerance", where, zero_allowed=True, what="a number")


def metric_choices(metrics: Sequence[str], class_prefix: str) -> str:
    """The values a ``metric`` key takes, in words (for errors and the kinds' ``keys``)."""
    return f"{', '.join(metrics)} or {class_prefix}<class name>"


def parse_metric(
    raw: Mapping[str, Any], where: Where, metrics: Sequence[str], class_prefix: str
) -> str:
    """``metric``: one of ``metrics``, or ``class_prefix`` and a class name."""
    metric = raw.get("metric")
    valid = metric_choices(metrics, class_prefix)
    if metric is None:
        raise where.error(f"missing; say which metric the claim is about ({valid})", "metric")
    if not isinstance(metric, str):
        raise where.error(f"expected a string ({valid}), got {metric!r}", key="metric")
    if metric in metrics or (
        metric.startswith(class_prefix) and metric[len(class_prefix) :].strip()
    ):
        return metric
    raise where.error(f"unknown metric {metric!r}; expected {valid}", key="metric")


def parse_epsilons(
    raw: Mapping[str, Any],
    where: Where,
    *,
    norm: str,
    what: Literal["epsilon", "radius"] = "epsilon",
) -> list[Epsilon]:
    """``eps``: one value or a non-empty list, no value twice, each a threat model in ``norm``;
    ``what`` names the values in the messages."""
    given = required(raw, "eps", where, f"missing; give {_EXAMPLES[what]} or a list of them")
    values = given if isinstance(given, list) else [given]
    if not values:
        raise where.error(f"an empty list; give at least one {what}", key="eps")
    epsilons: list[Epsilon] = []
    for value in values:
        eps = checked(parse_epsilon, value, where, "eps")
        if any(e.value == eps.value for e in epsilons):
            raise where.error(f"{what} {eps.text} appears twice in the list", key="eps")
        problem = epsilon_problem(norm, eps)
        if problem is not None:
            raise where.error(problem, key="eps")
        epsilons.append(eps)
    return epsilons


def sweep_params(norm: str, epsilons: Sequence[Epsilon]) -> dict[str, Any]:
    """A claim's ``norm``, ``eps`` (the first value) and ``_sweep`` (every value)."""
    return {"norm": norm, "eps": epsilons[0].text, "_sweep": [e.text for e in epsilons]}


def threat_of(params: Mapping[str, Any]) -> ThreatModel:
    """The threat model of one item of a sweep."""
    return ThreatModel(params["norm"], parse_epsilon(params["eps"]))


def sweep_of(params: Mapping[str, Any]) -> list[ThreatModel]:
    """Every threat model of the item's sweep."""
    return [ThreatModel(params["norm"], parse_epsilon(text)) for text in params["_sweep"]]


def expand_sweep(spec: ClaimSpec) -> list[ClaimSpec]:
    """One item per value of a list, with ids like ``pgd-miou[linf-4/255]``; a single value
    stays the claim itself."""
    p = spec.params
    if len(p["_sweep"]) == 1:
        return [spec]
    return [
        replace(
            spec,
            id=f"{spec.id}[{p['norm']}-{text}]",
            statement=f"{spec.statement} (at {p['norm']} eps={text})",
            params={**p, "eps": text},
        )
        for text in p["_sweep"]
    ]


class SweepKind(ClaimKind):
    """A kind whose :meth:`parse` returns :func:`sweep_params`: one item per value."""

    @classmethod
    def expand(cls, spec: ClaimSpec) -> list[ClaimSpec]:
        return expand_sweep(spec)

"""``kind = "certified"``: a certified metric at an L2 radius, by a named certifier.

The certifier is a registered plug-in (:mod:`audit.claims.certifiers`: ``lipschitz`` and
``smoothing`` are built in).  An ``eps`` list expands into one item per radius, as attack
sweeps do, and the Lipschitz certifier computes the whole grid in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where
from audit.claims.certifiers import CERTIFIERS, CLASS_PREFIX, METRICS
from audit.threat import ThreatModel, parse_epsilon

if TYPE_CHECKING:
    from audit.engine import Engine


class CertifierKeys(Mapping[str, str]):
    """A kind's keys plus ``certifier`` and every registered certifier's own keys, read
    when a suite is parsed, so a certifier registered later brings its keys along (a claim
    may still use those of its own certifier only: :func:`parse_certifier`)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)

    def _all(self) -> dict[str, str]:
        keys = {"certifier": f"one of {', '.join(map(repr, CERTIFIERS.names()))}"}
        for _, certifier in CERTIFIERS.items():
            keys.update(certifier.keys)
        return {**keys, **self._keys}

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def parse_certifier(raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
    """``certifier`` with its own keys; keys of another certifier are refused."""
    name = raw.get("certifier", "lipschitz")
    if not isinstance(name, str) or name not in CERTIFIERS:
        names = " or ".join(map(repr, CERTIFIERS.names()))
        raise where.error(f"expected {names}, got {name!r}", "certifier")
    certifier = CERTIFIERS.get(name)
    for other_name, other in CERTIFIERS.items():
        for key in other.keys:
            if other_name != name and key in raw and key not in certifier.keys:
                raise where.error(f"only the {other_name} certifier takes this key", key=key)
    return {"certifier": name, **certifier.parse(raw, where)}


def parse_l2_radii(raw: Mapping[str, Any], where: Where) -> list[str]:
    """``norm`` (must be given, and be ``l2``: certificates here are L2) and ``eps``."""
    if "norm" not in raw:
        raise where.error("missing: a radius means nothing without its norm; give 'l2'", "norm")
    if raw["norm"] != "l2":
        raise where.error(
            f"certificates are L2 radii; got norm {raw['norm']!r} (an Linf ball of radius e "
            "lies in the L2 ball of radius e*sqrt(3HW): state the L2 radius)",
            key="norm",
        )
    if "eps" not in raw:
        raise where.error("missing; give an L2 radius such as 0.1, or a list of them", "eps")
    values = raw["eps"] if isinstance(raw["eps"], list) else [raw["eps"]]
    if not values:
        raise where.error("an empty list; give at least one radius", key="eps")
    texts: list[str] = []
    seen: set[float] = set()
    for value in values:
        try:
            eps = parse_epsilon(value)
        except ValueError as exc:
            raise where.error(str(exc), key="eps") from None
        if eps.value in seen:
            raise where.error(f"radius {eps.text} appears twice in the list", key="eps")
        seen.add(eps.value)
        texts.append(eps.text)
    return texts


def expand_radii(spec: ClaimSpec) -> list[ClaimSpec]:
    """One item per radius of a list, with ids like ``certified-pa[l2-0.1]``."""
    radii = spec.params["_sweep"]
    if len(radii) == 1:
        return [spec]
    return [
        replace(
            spec,
            id=f"{spec.id}[l2-{text}]",
            statement=f"{spec.statement} (at l2 eps={text})",
            params={**spec.params, "eps": text},
        )
        for text in radii
    ]


def parse_certified_metric(raw: Mapping[str, Any], where: Where) -> str:
    metric = raw.get("metric")
    valid = f"{', '.join(METRICS)} or {CLASS_PREFIX}<class name>"
    if not isinstance(metric, str):
        raise where.error(f"missing or not a string; expected {valid}", key="metric")
    if metric in METRICS or (metric.startswith(CLASS_PREFIX) and metric[len(CLASS_PREFIX) :]):
        return metric
    raise where.error(f"unknown metric {metric!r}; expected {valid}", key="metric")


@register
class CertifiedClaim(ClaimKind):
    name = "certified"
    keys: ClassVar[Mapping[str, str]] = CertifierKeys(
        {
            "norm": "'l2' (mandatory)",
            "eps": "an L2 radius in [0, 1] pixel space, or a list (one item each)",
            "metric": f"{', '.join(METRICS)} or {CLASS_PREFIX}<class name>",
        }
    )

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        radii = parse_l2_radii(raw, where)
        return {
            **parse_certifier(raw, where),
            "norm": "l2",
            "eps": radii[0],
            "_sweep": radii,
            "metric": parse_certified_metric(raw, where),
        }

    @classmethod
    def expand(cls, spec: ClaimSpec) -> list[ClaimSpec]:
        return expand_radii(spec)

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        return measure_certified(spec, engine)


def measure_certified(spec: ClaimSpec, engine: Engine) -> Measurement:
    """The claimed certified metric at the claim's radius, from the named certifier."""
    p = spec.params
    threat = ThreatModel("l2", parse_epsilon(p["eps"]))
    # Before any pass, against the first image: some certifiers' passes are expensive.
    engine.check_radius(threat)
    return CERTIFIERS.get(p["certifier"]).measure(spec, engine, threat.eps.value, p["metric"])

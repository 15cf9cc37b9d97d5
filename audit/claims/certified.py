"""``kind = "certified"``: a certified metric at an L2 radius, by a named certifier.

The certifier is a registered plug-in (:mod:`audit.claims.certifiers`: ``lipschitz`` and
``smoothing`` are built in).  An ``eps`` list expands into one item per radius, as attack
sweeps do, and the Lipschitz certifier computes the whole grid in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from audit.claims import register
from audit.claims.base import ClaimSpec, Measurement, Where
from audit.claims.certifiers import CERTIFIERS, CLASS_PREFIX, METRICS
from audit.claims.parsing import (
    SweepKind,
    metric_choices,
    parse_epsilons,
    parse_metric,
    required,
    sweep_params,
    threat_of,
)

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


def parse_l2_norm(raw: Mapping[str, Any], where: Where) -> str:
    """``norm``: must be given, and be ``l2`` (certificates here are L2)."""
    norm = required(
        raw, "norm", where, "missing: a radius means nothing without its norm; give 'l2'"
    )
    if norm != "l2":
        raise where.error(
            f"certificates are L2 radii; got norm {norm!r} (an Linf ball of radius e "
            "lies in the L2 ball of radius e*sqrt(3HW): state the L2 radius)",
            key="norm",
        )
    return norm


@register
class CertifiedClaim(SweepKind):
    name = "certified"
    keys: ClassVar[Mapping[str, str]] = CertifierKeys(
        {
            "norm": "'l2' (mandatory)",
            "eps": "an L2 radius in [0, 1] pixel space, or a list (one item each)",
            "metric": metric_choices(METRICS, CLASS_PREFIX),
        }
    )

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        norm = parse_l2_norm(raw, where)
        radii = parse_epsilons(raw, where, norm=norm, what="radius")
        return {
            **parse_certifier(raw, where),
            **sweep_params(norm, radii),
            "metric": parse_metric(raw, where, METRICS, CLASS_PREFIX),
        }

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        return measure_certified(spec, engine)


def measure_certified(spec: ClaimSpec, engine: Engine) -> Measurement:
    """The claimed certified metric at the claim's radius, from the named certifier."""
    p = spec.params
    threat = threat_of(p)
    # Before any pass, against the first image: some certifiers' passes are expensive.
    engine.check_radius(threat)
    return CERTIFIERS.get(p["certifier"]).measure(spec, engine, threat.eps.value, p["metric"])

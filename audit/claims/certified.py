"""``kind = "certified"``: a certified metric at an L2 radius, by a named certifier.

Two certifiers: ``lipschitz`` (per-pixel radii and joint-budget metrics from one forward pass
of a Lipschitz network, Massena et al.) and ``smoothing`` (randomized smoothing, SegCertify,
for any model).  An ``eps`` list expands into one item per radius, as attack sweeps do, and
the Lipschitz certifier computes the whole grid in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where
from audit.threat import parse_epsilon

if TYPE_CHECKING:
    from audit.engine import Engine

CERTIFIERS = ("lipschitz", "smoothing")
METRICS = ("certified_pixel_accuracy", "certified_miou", "certified_fraction")
CLASS_PREFIX = "certified_class_iou:"
LIPSCHITZ_SOURCES = ("auto", "computed", "claimed")
SMOOTHING_KEYS: dict[str, str] = {
    "sigma": "noise standard deviation in [0, 1] pixel space (default 0.25)",
    "n": "noisy samples for the test (default 100)",
    "n0": "noisy samples to pick each pixel's class (default 10)",
    "tau": "probability threshold of the binomial test (default 0.75)",
    "alpha": "family-wise error level (default 0.001)",
    "correction": "'holm' (default) or 'bonferroni'",
}
SMOOTHING_DEFAULTS: dict[str, Any] = {
    "sigma": 0.25,
    "n": 100,
    "n0": 10,
    "tau": 0.75,
    "alpha": 1e-3,
    "correction": "holm",
}
CERTIFIER_KEYS: dict[str, str] = {
    "certifier": "'lipschitz' or 'smoothing'",
    "lipschitz": "where L comes from: 'auto' (default: the bound computed from the weights, "
    "else the model's claimed constant, tested), 'computed', 'claimed', or a number",
    **SMOOTHING_KEYS,
}


def parse_certifier(raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
    """``certifier`` with its own keys; keys of the other certifier are refused."""
    certifier = raw.get("certifier", "lipschitz")
    if certifier not in CERTIFIERS:
        raise where.error(f"expected 'lipschitz' or 'smoothing', got {certifier!r}", "certifier")
    out: dict[str, Any] = {"certifier": certifier}
    if certifier == "lipschitz":
        for key in SMOOTHING_KEYS:
            if key in raw:
                raise where.error("only the smoothing certifier takes this key", key=key)
        source = raw.get("lipschitz", "auto")
        if isinstance(source, bool) or not (
            source in LIPSCHITZ_SOURCES or (isinstance(source, int | float) and source > 0)
        ):
            raise where.error(
                f"expected 'auto', 'computed', 'claimed' or a positive number, got {source!r}",
                key="lipschitz",
            )
        out["lipschitz"] = float(source) if isinstance(source, int | float) else source
        return out
    if "lipschitz" in raw:
        raise where.error("only the lipschitz certifier takes this key", key="lipschitz")
    config = dict(SMOOTHING_DEFAULTS)
    for key in SMOOTHING_KEYS:
        if key in raw:
            config[key] = raw[key]
    for key in ("n", "n0"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise where.error(f"expected a whole number >= 1, got {value!r}", key=key)
    for key, low, high in (("sigma", 0.0, None), ("tau", 0.5, 1.0), ("alpha", 0.0, 1.0)):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise where.error(f"expected a number, got {value!r}", key=key)
        if value <= low or (high is not None and value >= high):
            bounds = f"> {low:g}" + (f" and < {high:g}" if high is not None else "")
            raise where.error(f"expected a number {bounds}, got {value!r}", key=key)
        config[key] = float(value)
    if config["correction"] not in ("holm", "bonferroni"):
        raise where.error(
            f"expected 'holm' or 'bonferroni', got {config['correction']!r}", "correction"
        )
    out["smoothing"] = config
    return out


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
    keys: ClassVar[Mapping[str, str]] = {
        **CERTIFIER_KEYS,
        "norm": "'l2' (mandatory)",
        "eps": "an L2 radius in [0, 1] pixel space, or a list (one item each)",
        "metric": f"{', '.join(METRICS)} or {CLASS_PREFIX}<class name>",
    }

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
        from audit.certification import measure_certified

        return measure_certified(spec, engine)

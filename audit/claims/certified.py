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

import torch

from audit import metrics
from audit.certify import joint
from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where
from audit.errors import ConfigError
from audit.evaluations.certified import certify_lipschitz, certify_smoothing, smoothing_miou
from audit.evaluations.lipschitz import KAPPA
from audit.threat import ThreatModel, parse_epsilon

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
        return measure_certified(spec, engine)


def measure_certified(spec: ClaimSpec, engine: Engine) -> Measurement:
    """The claimed certified metric at the claim's radius, from the named certifier."""
    p = spec.params
    threat = ThreatModel("l2", parse_epsilon(p["eps"]))
    eps = threat.eps.value
    metric = p["metric"]
    radii = [parse_epsilon(t).value for t in p["_sweep"]]
    # Before any pass, against the first image: smoothing's passes are expensive.
    engine.check_radius(threat)
    if p["certifier"] == "smoothing":
        return _measure_smoothing(spec, engine, eps, metric)
    cert = certify_lipschitz(engine, p["lipschitz"], radii)
    # The pass (shared by the whole sweep, so not refused inside it) knows every image's size.
    for height, width in sorted(set(cert.resolutions)):
        engine.check_radius(threat, (3, height, width))
    i = cert.index(eps)
    evidence: dict[str, Any] = {
        "certifier": "lipschitz",
        "lipschitz": cert.lipschitz.to_dict(),
        "radius": eps,
        "kappa": KAPPA,
    }
    if metric == "certified_pixel_accuracy":
        value, interval = engine.score_state(cert.pixel_accuracy[:, i], metrics.ratio_of_sums)
        quantity = "certified pixel accuracy"
    elif metric == "certified_fraction":
        value, interval = engine.score_state(cert.fraction[:, i], metrics.ratio_of_sums)
        quantity = "share of pixels certified"
    else:
        if metric.startswith(CLASS_PREFIX):
            name = metric[len(CLASS_PREFIX) :]
            k = _class_index(spec, engine, name)
            j = cert.iou_radii.index(eps)
            value = float(joint.dataset_iou_lower_bound(cert.iou_state)[j, k])
            quantity = f"worst-case IoU of class {name!r}"
        else:
            j = cert.iou_radii.index(eps)
            value = float(joint.certified_miou_lower_bound(cert.iou_state)[j])
            quantity = "worst-case mIoU"
        interval = None
        evidence["aggregation"] = (
            "dataset-level worst case: one perturbation per image, each within the radius, "
            "chosen jointly to minimise the dataset IoU (Dinkelbach bisection)"
        )
    resolution = cert.resolution
    at = f" at {resolution[0]}x{resolution[1]}" if resolution else ""
    return Measurement(
        value=value,
        quantity=quantity,
        condition=f"at L2 radius {p['eps']}{at} (Lipschitz certificate, L = "
        f"{cert.lipschitz.value:.4g}, {cert.lipschitz.kind})",
        num_samples=cert.num_samples,
        interval=interval,
        evidence=evidence,
    )


def _class_index(spec: ClaimSpec, engine: Engine, name: str) -> int:
    if name not in engine.class_names:
        raise ConfigError(
            f"unknown class {name!r}; classes are {', '.join(engine.class_names)}",
            source=spec.source,
            claim=spec.id,
            key="metric",
        )
    return engine.class_names.index(name)


def _measure_smoothing(spec: ClaimSpec, engine: Engine, eps: float, metric: str) -> Measurement:
    cert = certify_smoothing(engine, spec.params["smoothing"])
    k = engine.num_classes
    covered = eps <= cert.radius
    if metric == "certified_fraction":
        counts = torch.stack([cert.pixels - cert.abstained, cert.pixels], dim=1)
        if not covered:
            counts[:, 0] = 0
        value, interval = engine.score_state(counts, metrics.ratio_of_sums)
        quantity = "share of pixels certified"
    else:
        per_image = cert.per_image if covered else _nothing_certified(cert.per_image, k)
        if metric == "certified_pixel_accuracy":
            value, interval = engine.score_state(per_image, metrics.pixel_accuracy)
            quantity = "certified pixel accuracy"
        elif metric.startswith(CLASS_PREFIX):
            name = metric[len(CLASS_PREFIX) :]
            c = _class_index(spec, engine, name)
            value, interval = engine.score_state(
                per_image, lambda cm: metrics._scalar(metrics.class_iou(cm)[..., c])
            )
            quantity = f"certified IoU of class {name!r}"
        else:
            value, interval = engine.score_state(per_image, smoothing_miou)
            quantity = "certified mIoU"
    cfg = spec.params["smoothing"]
    return Measurement(
        value=value,
        quantity=quantity,
        condition=f"at L2 radius {spec.params['eps']} (randomized smoothing, sigma "
        f"{cfg['sigma']:g}, n {cfg['n']}, tau {cfg['tau']:g}, alpha {cfg['alpha']:g}, "
        f"{cfg['correction']}; certified radius {cert.radius:.4g}"
        + ("" if covered else ", below the claimed radius: nothing is certified")
        + ")",
        num_samples=cert.num_samples,
        interval=interval,
        evidence={
            "certifier": "smoothing",
            "config": dict(cfg),
            "certified_radius": cert.radius,
            "abstained": int(cert.abstained.sum()),
            "pixels": int(cert.pixels.sum()),
            "forward_passes": cert.forward_passes,
        },
    )


def _nothing_certified(per_image: torch.Tensor, k: int) -> torch.Tensor:
    """Every pixel moved to the abstain column: the certificate's radius is too small."""
    out = torch.zeros_like(per_image)
    out[:, :, k] = per_image.sum(2)
    return out

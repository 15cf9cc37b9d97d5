"""Certifiers: what a ``certified`` claim can be certified by, as registered plug-ins.

A certifier declares its name and its own claim keys once, parses them, and measures a
certified metric at a radius from its evaluation (:mod:`audit.evaluations.certified`).  Two
are built in: ``lipschitz`` (per-pixel radii and joint-budget metrics from one forward pass
of a Lipschitz network, Massena et al.) and ``smoothing`` (randomized smoothing, SegCertify,
for any model).  A third party adds one through the ``segaudit.certifiers`` entry points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from audit import metrics
from audit.certify import joint
from audit.claims.base import ClaimSpec, Measurement, Where, at_resolution
from audit.claims.parsing import sweep_of, threat_of, whole_number
from audit.errors import ConfigError
from audit.evaluations.certified import certify_lipschitz, certify_smoothing, smoothing_miou
from audit.evaluations.lipschitz import KAPPA, LipschitzSource
from audit.registry import Registry

if TYPE_CHECKING:
    from audit.engine import Engine

METRICS = ("certified_pixel_accuracy", "certified_miou", "certified_fraction")
CLASS_PREFIX = "certified_class_iou:"
LIPSCHITZ_SOURCES = ("auto", "computed", "claimed")
SMOOTHING_DEFAULTS: dict[str, Any] = {
    "sigma": 0.25,
    "n": 100,
    "n0": 10,
    "tau": 0.75,
    "alpha": 1e-3,
    "correction": "holm",
}


class Certifier(ABC):
    """Base class of certifiers; subclasses register with :func:`register_certifier`."""

    #: the value of ``certifier`` in a claim
    name: ClassVar[str]
    #: the claim keys only this certifier takes, with a description of their values
    keys: ClassVar[Mapping[str, str]] = {}

    @classmethod
    @abstractmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        """Validate the certifier's own keys; return the parameters they give the claim."""

    @classmethod
    @abstractmethod
    def measure(cls, spec: ClaimSpec, engine: Engine, eps: float, metric: str) -> Measurement:
        """The claim's certified ``metric`` at L2 radius ``eps``."""


#: certifiers by name
CERTIFIERS: Registry[type[Certifier]] = Registry("certifier", "segaudit.certifiers")


def register_certifier(cls: type[Certifier]) -> type[Certifier]:
    """Class decorator: make ``cls`` available as ``certifier = "<cls.name>"`` in claims."""
    return CERTIFIERS.register(cls)


def unproven_constant(source: LipschitzSource) -> str | None:
    """Words for a certificate's constant when it was claimed rather than proven (a search
    failed to refute it, which is not a proof); ``None`` for a bound from the weights."""
    if source.kind == "computed":
        return None
    return f"the claimed L = {source.value:.6g}, not proven from the weights"


@register_certifier
class LipschitzCertifier(Certifier):
    name = "lipschitz"
    keys: ClassVar[Mapping[str, str]] = {
        "lipschitz": "where L comes from: 'auto' (default: the bound computed from the "
        "weights, else the model's claimed constant, tested), 'computed', 'claimed', or a "
        "number",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        source = raw.get("lipschitz", "auto")
        if isinstance(source, bool) or not (
            source in LIPSCHITZ_SOURCES or (isinstance(source, int | float) and source > 0)
        ):
            raise where.error(
                f"expected 'auto', 'computed', 'claimed' or a positive number, got {source!r}",
                key="lipschitz",
            )
        return {"lipschitz": float(source) if isinstance(source, int | float) else source}

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine, eps: float, metric: str) -> Measurement:
        p = spec.params
        threat = threat_of(p)
        radii = [t.eps.value for t in sweep_of(p)]
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
        at = at_resolution(resolution)
        unproven = unproven_constant(cert.lipschitz)
        evidence["proof"] = "conditional" if unproven else "proven"
        return Measurement(
            value=value,
            quantity=quantity,
            condition=f"at L2 radius {p['eps']}{at} (Lipschitz certificate, L = "
            f"{cert.lipschitz.value:.4g}, {cert.lipschitz.kind}"
            + (f"; conditional on {unproven}" if unproven else "")
            + ")",
            num_samples=cert.num_samples,
            interval=interval,
            evidence=evidence,
            unproven=unproven,
        )


@register_certifier
class SmoothingCertifier(Certifier):
    name = "smoothing"
    keys: ClassVar[Mapping[str, str]] = {
        "sigma": "noise standard deviation in [0, 1] pixel space (default 0.25)",
        "n": "noisy samples for the test (default 100)",
        "n0": "noisy samples to pick each pixel's class (default 10)",
        "tau": "probability threshold of the binomial test (default 0.75)",
        "alpha": "family-wise error level (default 0.001)",
        "correction": "'holm' (default) or 'bonferroni'",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        config = dict(SMOOTHING_DEFAULTS)
        for key in cls.keys:
            if key in raw:
                config[key] = raw[key]
        for key in ("n", "n0"):
            whole_number(config, key, where)
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
        return {"smoothing": config}

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine, eps: float, metric: str) -> Measurement:
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


def _class_index(spec: ClaimSpec, engine: Engine, name: str) -> int:
    if name not in engine.class_names:
        raise ConfigError(
            f"unknown class {name!r}; classes are {', '.join(engine.class_names)}",
            source=spec.source,
            claim=spec.id,
            key="metric",
        )
    return engine.class_names.index(name)


def _nothing_certified(per_image: torch.Tensor, k: int) -> torch.Tensor:
    """Every pixel moved to the abstain column: the certificate's radius is too small."""
    out = torch.zeros_like(per_image)
    out[:, :, k] = per_image.sum(2)
    return out

"""``kind = "attack"``: a metric under a named attack at a threat model, or over a sweep.

An ``eps`` list expands into one item per epsilon (``arnab2018::ifgsm[linf-4/255]``); every
item knows the whole sweep, so the single-step family computes all of it from one gradient
when the first item runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from audit import metrics
from audit.attacks import COMMON_PARAMS, build_attack, check_name, library_of, native_attack
from audit.claims import register
from audit.claims.base import ClaimSpec, Measurement, Where, at_resolution, score_metric
from audit.claims.clean import CLASS_METRIC_PREFIX, describe_metric
from audit.claims.parsing import (
    SweepKind,
    checked,
    metric_choices,
    parse_epsilons,
    parse_metric,
    required,
    sweep_of,
    sweep_params,
    threat_of,
    whole_number,
)
from audit.evaluations.attack import evaluate_attack
from audit.evaluations.clean import evaluate_clean
from audit.metrics import finite_or_none
from audit.threat import parse_epsilon, parse_norm

if TYPE_CHECKING:
    from audit.engine import Engine

#: per-image mIoU quantiles a claim can name: the p-th percentile of the images' own mIoU
IMAGE_QUANTILES: dict[str, float] = {
    "image_miou_p10": 0.10,
    "image_miou_p25": 0.25,
    "image_miou_p50": 0.50,
}
METRICS = (
    "miou",
    "pixel_accuracy",
    "mean_class_accuracy",
    "iou_ratio",
    "attack_success_rate",
    *IMAGE_QUANTILES,
    "small_object_recall",
)
_NORM_MISSING = "missing: an epsilon means nothing without its norm; give norm = 'linf' or 'l2'"


def parse_attack_params(
    raw: Mapping[str, Any], name: str, norm: str, where: Where
) -> dict[str, Any]:
    """Top-level ``steps``/``step_size``/``restarts``/``random_start`` plus a ``params`` table.

    Native attacks are checked here against what they accept; a library attack's parameters
    are checked by the library's signature when it is built (an error of that claim only).
    """
    params: dict[str, Any] = {}
    for key in COMMON_PARAMS:
        if key not in raw:
            continue
        if key in ("steps", "restarts"):
            params[key] = whole_number(raw, key, where)
        elif key == "step_size":
            params[key] = checked(parse_epsilon, raw[key], where, key).value
        elif not isinstance(raw[key], bool):
            raise where.error(f"expected true or false, got {raw[key]!r}", key=key)
        else:
            params[key] = raw[key]
    extra = raw.get("params", {})
    if not isinstance(extra, Mapping):
        raise where.error("expected a table of the attack's keyword arguments", key="params")
    for key, value in extra.items():
        if key in params:
            raise where.error(f"{key!r} is given both at top level and in params", "params")
        if not isinstance(value, str | int | float | bool):
            raise where.error(f"{key!r}: expected a number, string or boolean", "params")
        params[key] = value
    if library_of(name) == "native":
        native = native_attack(name)
        norms, accepted = native.norms, tuple(native.defaults)
        if norm not in norms:
            raise where.error(
                f"attack {name!r} is defined for {' and '.join(norms)}, not {norm}", key="norm"
            )
        for key in params:
            if key not in accepted:
                raise where.error(
                    f"attack {name!r} does not take {key!r}; it accepts "
                    f"{', '.join(accepted) or 'no parameters'}",
                    key=key if key in raw else "params",
                )
        try:
            native(**params)  # values: an ensemble's members, APGD's loss, whole numbers
        except ValueError as exc:
            raise where.error(str(exc), key="params") from None
    return params


def objective_of(metric: str) -> str:
    """The per-image score an ensemble minimises for a claim's ``metric``: pixel accuracy
    for the pixel-counting metrics, per-image mIoU for the IoU family."""
    if metric in ("pixel_accuracy", "attack_success_rate"):
        return "pixel_accuracy"
    return "miou"


def check_attack_params(spec: ClaimSpec) -> None:
    """Build the claim's attack once, before any work: a parameter it does not take is an
    error naming the key (a ``TypeError`` during the run is a bug, and reported as one)."""
    p = spec.params
    try:
        build_attack(p["attack"], p["attack_params"])
    except TypeError as exc:
        raise Where(source=spec.source, claim=spec.id).error(str(exc), key="params") from None


@register
class AttackClaim(SweepKind):
    name = "attack"
    keys: ClassVar[Mapping[str, str]] = {
        "attack": "a native attack (fgsm, fgsm-ll, ifgsm, ifgsm-ll, pgd, segpgd, cospgd, "
        "apgd, sea, noise) or <library>:<name> (torchattacks:PGD, foolbox:LinfPGD, "
        "advlib:alma_prox)",
        "norm": "'linf' or 'l2' (mandatory)",
        "eps": "an epsilon ('4/255' or 0.0157) or a list of them (one item each)",
        "metric": metric_choices(METRICS, CLASS_METRIC_PREFIX),
        "steps": "iterations (iterative attacks)",
        "step_size": "step per iteration, e.g. '1/255'",
        "restarts": "random restarts; each image keeps its worst (PGD family)",
        "random_start": "start from a random point of the ball (PGD family)",
        "params": "a table of further keyword arguments for the attack (library attacks; "
        "sea: iterations, members, objective, radius_schedule)",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        attack = checked(check_name, raw.get("attack"), where, "attack")
        norm = checked(parse_norm, required(raw, "norm", where, _NORM_MISSING), where, "norm")
        epsilons = parse_epsilons(raw, where, norm=norm)
        return {
            "attack": attack,
            **sweep_params(norm, epsilons),
            "metric": parse_metric(raw, where, METRICS, CLASS_METRIC_PREFIX),
            "attack_params": _with_objective(
                parse_attack_params(raw, attack, norm, where), attack, raw.get("metric")
            ),
        }

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        p = spec.params
        metric = p["metric"]
        threat = threat_of(p)
        check_attack_params(spec)
        evaluation = evaluate_attack(
            engine, p["attack"], p["attack_params"], threat, sweep=sweep_of(p)
        )
        if metric == "iou_ratio":
            paired = torch.stack([evaluate_clean(engine).per_image, evaluation.per_image], dim=1)
            value, interval = engine.score_state(paired, metrics.iou_ratio)
            quantity = "IoU ratio"
        elif metric == "attack_success_rate":
            counts = torch.stack([evaluation.flipped, evaluation.clean_correct], dim=1)
            value, interval = engine.score_state(counts, metrics.ratio_of_sums)
            quantity = "attack success rate (share of correct pixels flipped)"
        elif metric in IMAGE_QUANTILES:
            q = IMAGE_QUANTILES[metric]
            value, interval = image_quantile(engine, evaluation.per_image, q)
            quantity = f"{round(q * 100)}th percentile of the per-image mIoU"
        elif metric == "small_object_recall":
            if evaluation.object_sizes is None:
                raise Where(spec.source, spec.id).error(
                    "this run counts no ground-truth objects", key="metric"
                )
            small = evaluation.object_sizes[:, 0, :2].flip(1)  # (detected, objects)
            value, interval = engine.score_state(small, metrics.ratio_of_sums)
            quantity = "recall of small ground-truth objects"
        else:
            value, interval = score_metric(spec, engine, evaluation.per_image, metric)
            quantity = describe_metric(metric)
        resolution = evaluation.resolution
        at = at_resolution(resolution)
        return Measurement(
            value=value,
            quantity=quantity,
            condition=f"under {evaluation.label}{at}",
            num_samples=evaluation.num_samples,
            interval=interval,
            evidence={
                "evaluation": evaluation.id,
                "attack": evaluation.attack,
                "threat": threat.to_dict(),
                "resolution": list(resolution) if resolution else None,
                "success_rate": finite_or_none(evaluation.success_rate),
            },
        )


def _with_objective(params: dict[str, Any], attack: str, metric: Any) -> dict[str, Any]:
    """An attack that keeps a per-image worst case (APGD, SEA) keeps it by the claim's
    metric unless the claim says otherwise."""
    if library_of(attack) != "native" or "objective" in params:
        return params
    if getattr(native_attack(attack), "selects_by_metric", False) and isinstance(metric, str):
        return {**params, "objective": objective_of(metric)}
    return params


def image_quantile(
    engine: Engine, per_image: torch.Tensor, q: float
) -> tuple[float, metrics.Interval | None]:
    """The ``q`` quantile of the images' own mIoU (images without labelled pixels left
    out), with a percentile bootstrap over images: a quantile is not additive, so it is
    resampled directly rather than through summed confusion matrices."""
    values = np.asarray(metrics.miou(per_image), dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), None
    value = float(np.quantile(values, q))
    if values.size < 2 or engine.bootstrap_resamples < 1:
        return value, None
    rng = np.random.default_rng(engine.seed)
    draws = rng.integers(0, values.size, size=(engine.bootstrap_resamples, values.size))
    resampled = np.quantile(values[draws], q, axis=1)
    alpha = (1.0 - engine.confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return value, metrics.Interval(
        float(low), float(high), engine.confidence, engine.bootstrap_resamples
    )

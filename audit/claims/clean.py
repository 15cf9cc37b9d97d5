"""``kind = "clean"``: a metric of the model's predictions on unperturbed images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where, score_metric
from audit.evaluations.clean import evaluate_clean

if TYPE_CHECKING:
    from audit.engine import Engine

METRICS = ("miou", "pixel_accuracy", "mean_class_accuracy")
CLASS_METRIC_PREFIX = "class_iou:"


def describe_metric(metric: str) -> str:
    """The metric in words, as failure messages print it."""
    if metric.startswith(CLASS_METRIC_PREFIX):
        return f"IoU of class {metric[len(CLASS_METRIC_PREFIX) :]!r}"
    return {"miou": "mIoU", "pixel_accuracy": "pixel accuracy"}.get(
        metric, metric.replace("_", " ")
    )


def parse_metric(raw: Mapping[str, Any], where: Where) -> str:
    """Validate a ``metric`` key naming a clean-prediction metric."""
    metric = raw.get("metric")
    if metric is None:
        raise where.error("missing; say which metric the claim is about", key="metric")
    valid = f"{', '.join(METRICS)} or {CLASS_METRIC_PREFIX}<class name>"
    if not isinstance(metric, str):
        raise where.error(f"expected a string ({valid}), got {metric!r}", key="metric")
    if metric in METRICS:
        return metric
    if metric.startswith(CLASS_METRIC_PREFIX) and metric[len(CLASS_METRIC_PREFIX) :].strip():
        return metric
    raise where.error(f"unknown metric {metric!r}; expected {valid}", key="metric")


@register
class CleanClaim(ClaimKind):
    name = "clean"
    keys: ClassVar[Mapping[str, str]] = {
        "metric": "miou, pixel_accuracy, mean_class_accuracy or class_iou:<class name>"
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        return {"metric": parse_metric(raw, where)}

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        metric = spec.params["metric"]
        clean = evaluate_clean(engine)
        value, interval = score_metric(spec, engine, clean.per_image, metric)
        return Measurement(
            value=value,
            quantity=describe_metric(metric),
            condition="on clean images",
            num_samples=clean.num_samples,
            interval=interval,
        )

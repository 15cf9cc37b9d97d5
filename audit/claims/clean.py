"""``kind = "clean"``: a metric of the model's predictions on unperturbed images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where, score_metric
from audit.claims.parsing import metric_choices, parse_metric
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


@register
class CleanClaim(ClaimKind):
    name = "clean"
    keys: ClassVar[Mapping[str, str]] = {"metric": metric_choices(METRICS, CLASS_METRIC_PREFIX)}

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        return {"metric": parse_metric(raw, where, METRICS, CLASS_METRIC_PREFIX)}

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

"""``kind = "corruption"`` and ``kind = "corruption_search"``: common corruptions.

``corruption``: a metric under a named corruption at a severity; a ``severity`` list expands
into one item per severity (``fog-miou[s3]``), as an ``eps`` list does for attacks.  Every
image is corrupted with its own seed, derived from the audit's seed and its index.

``corruption_search``: "under any corruption in these ranges the metric holds".  Hypothesis
draws the corruption, a continuous severity, a seed and optionally a box, steers towards the
lowest metric, shrinks a violation and replays it first on the next run; the failure names the
shrunk parameters, the smallest severity at which they still violate, and the worst images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from audit import metrics
from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where, at_resolution, score_metric
from audit.claims.clean import CLASS_METRIC_PREFIX, describe_metric
from audit.claims.parsing import metric_choices, parse_metric, whole_number
from audit.corruptions import CORRUPTIONS
from audit.evaluations.clean import evaluate_clean
from audit.evaluations.corruption import evaluate_corruption, search_corruptions

if TYPE_CHECKING:
    from audit.engine import Engine

METRICS = ("miou", "pixel_accuracy", "mean_class_accuracy", "iou_ratio")
SEVERITY_RANGE = (0.0, 5.0)
#: examples a search tries by default, and images each example is measured on
DEFAULT_MAX_EXAMPLES = 30
DEFAULT_SEARCH_IMAGES = 8


def _known(where: Where, key: str, name: Any) -> str:
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise where.error(
            f"unknown corruption {name!r}; known: {', '.join(sorted(CORRUPTIONS))}", key=key
        )
    return name


def _severity(value: Any, where: Where) -> float:
    low, high = SEVERITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise where.error(f"expected a number from 0 to 5, got {value!r}", key="severity")
    if not low <= value <= high:
        raise where.error(
            f"{value!r} is outside imagecorruptions' scale 0 (clean) to 5", key="severity"
        )
    return float(value)


def severity_text(value: float) -> str:
    return f"{value:g}"


def measure_corrupted(
    spec: ClaimSpec, engine: Engine, per_image: torch.Tensor, metric: str
) -> tuple[float, Any, str]:
    """``metric`` of per-image confusion matrices under a corruption; ``iou_ratio`` divides
    by the clean mIoU of the same images (paired, so its interval is paired too)."""
    if metric == "iou_ratio":
        paired = torch.stack([evaluate_clean(engine).per_image, per_image], dim=1)
        value, interval = engine.score_state(paired, metrics.iou_ratio)
        return value, interval, "IoU ratio (mIoU under the corruption / clean mIoU)"
    value, interval = score_metric(spec, engine, per_image, metric)
    return value, interval, describe_metric(metric)


@register
class CorruptionClaim(ClaimKind):
    name = "corruption"
    keys: ClassVar[Mapping[str, str]] = {
        "corruption": "a corruption name (gaussian_noise, brightness, fog, ..., occlusion; "
        "docs/claims.md lists them)",
        "severity": "a severity from 0 (clean) to 5, fractions allowed, or a list of them "
        "(one item each)",
        "metric": metric_choices(METRICS, CLASS_METRIC_PREFIX),
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        name = _known(where, "corruption", raw.get("corruption"))
        if "severity" not in raw:
            raise where.error("missing; give a severity from 1 to 5 or a list", key="severity")
        given = raw["severity"]
        values = given if isinstance(given, list) else [given]
        if not values:
            raise where.error("an empty list; give at least one severity", key="severity")
        severities = [_severity(v, where) for v in values]
        if len(set(severities)) != len(severities):
            raise where.error("a severity appears twice in the list", key="severity")
        return {
            "corruption": name,
            "severity": severities[0],
            "_severities": severities,
            "metric": parse_metric(raw, where, METRICS, CLASS_METRIC_PREFIX),
        }

    @classmethod
    def expand(cls, spec: ClaimSpec) -> list[ClaimSpec]:
        severities = spec.params["_severities"]
        if len(severities) == 1:
            return [spec]
        return [
            replace(
                spec,
                id=f"{spec.id}[s{severity_text(s)}]",
                statement=f"{spec.statement} (at severity {severity_text(s)})",
                params={**spec.params, "severity": s},
            )
            for s in severities
        ]

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        p = spec.params
        evaluation = evaluate_corruption(engine, p["corruption"], p["severity"])
        value, interval, quantity = measure_corrupted(
            spec, engine, evaluation.per_image, p["metric"]
        )
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
                "corruption": evaluation.corruption,
                "family": evaluation.family,
                "severity": evaluation.severity,
                "seeds": "per image, from the audit seed, the corruption and the image index",
            },
        )


def parse_region(raw: Mapping[str, Any], where: Where) -> dict[str, list[float]] | None:
    """``region = { height = [lo, hi], width = [lo, hi] }``: the corruption is applied inside
    a box of that size (fractions of the image), placed anywhere; the search draws it."""
    region = raw.get("region")
    if region is None:
        return None
    if not isinstance(region, Mapping) or set(region) - {"height", "width"}:
        raise where.error(
            "expected a table { height = [lo, hi], width = [lo, hi] } of fractions of the "
            f"image, got {region!r}",
            key="region",
        )
    out = {}
    for side in ("height", "width"):
        value = region.get(side, [0.1, 0.5])
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not 0 < value[0] <= value[1] <= 1
        ):
            raise where.error(
                f"{side}: expected [lo, hi] with 0 < lo <= hi <= 1, got {value!r}", key="region"
            )
        out[side] = [float(v) for v in value]
    return out


@register
class CorruptionSearchClaim(ClaimKind):
    name = "corruption_search"
    keys: ClassVar[Mapping[str, str]] = {
        "corruptions": "a list of corruption names; the search picks among them",
        "severity": "[low, high]: the continuous severity range searched (0 = clean, 5 = "
        "imagecorruptions' strongest)",
        "region": "optional { height = [lo, hi], width = [lo, hi] }: the corruption is "
        "applied inside a box of that size (fractions of the image), placed by the search",
        "metric": metric_choices(METRICS, CLASS_METRIC_PREFIX),
        "max_examples": f"examples the search tries (default {DEFAULT_MAX_EXAMPLES}); each is "
        "a forward pass over the searched images",
        "search_images": "how many of the audited images (the first ones) each example is "
        f"measured on (default {DEFAULT_SEARCH_IMAGES})",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        names = raw.get("corruptions")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names:
            raise where.error("expected a non-empty list of corruption names", "corruptions")
        names = [_known(where, "corruptions", n) for n in names]
        severity = raw.get("severity", list(SEVERITY_RANGE))
        if not isinstance(severity, list) or len(severity) != 2:
            raise where.error(
                f"expected a range [low, high] such as [0, 5], got {severity!r}", "severity"
            )
        low, high = (_severity(v, where) for v in severity)
        if low > high:
            raise where.error(f"low {low:g} exceeds high {high:g}", key="severity")
        return {
            "corruptions": names,
            "severity": [low, high],
            "region": parse_region(raw, where),
            "metric": parse_metric(raw, where, METRICS, CLASS_METRIC_PREFIX),
            "max_examples": whole_number(raw, "max_examples", where, default=DEFAULT_MAX_EXAMPLES),
            "search_images": whole_number(
                raw, "search_images", where, default=DEFAULT_SEARCH_IMAGES
            ),
        }

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        p = spec.params
        result = search_corruptions(
            engine,
            {
                "corruptions": list(p["corruptions"]),
                "severity": list(p["severity"]),
                "region": p["region"],
                "metric": p["metric"],
                "max_examples": p["max_examples"],
                "images": p["search_images"],
                "min": spec.threshold.min,
                "max": spec.threshold.max,
                "key": spec.nodeid,
                "database": hypothesis_db(engine),
            },
        )
        quantity = (
            "IoU ratio (mIoU under the corruption / clean mIoU)"
            if p["metric"] == "iou_ratio"
            else describe_metric(p["metric"])
        )
        ranges = (
            f"{', '.join(p['corruptions'])} at severity {p['severity'][0]:g}-{p['severity'][1]:g}"
        )
        if p["region"]:
            ranges += " inside a box"
        found = ""
        if result.shrunk is not None:
            s = result.shrunk
            boundary = s["boundary"]
            found = (
                f"; shrunk counterexample: {s['describe']} gives {s['value']:.3f}; it violates "
                f"from severity {boundary['severity']:.3f} on (bisected to within "
                f"{boundary['resolution']:.3g}); worst images: {', '.join(s['worst_images'])}"
            )
        worst = result.worst
        value = worst["value"] if worst is not None else float("nan")
        return Measurement(
            value=value,
            quantity=f"worst {quantity}",
            condition=f"found by a search of {result.examples} examples over {ranges} "
            f"({result.num_samples} images each){found}",
            num_samples=result.num_samples,
            evidence={
                "search": {
                    "examples": result.examples,
                    "first_example": result.first,
                    "worst": result.worst,
                    "shrunk": result.shrunk,
                    "database": result.database,
                    "forward_passes": result.forward_passes,
                    "seconds": round(result.seconds, 3),
                },
            },
        )


def hypothesis_db(engine: Engine) -> str | None:
    """The example database folder of this run (the ``hypothesis_db`` setting), or None."""
    folder = getattr(engine, "hypothesis_db", None)
    return str(folder) if folder is not None else None

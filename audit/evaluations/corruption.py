"""Corruption evaluations: a named corruption at a severity, and a search over corruptions.

:func:`evaluate_corruption` is the deterministic one (``kind = "corruption"``, the
Cityscapes-C protocol): every image corrupted with its own seed, derived from the audit's
seed and the image's index, so the same run gives the same numbers and every severity of a
corruption uses the same noise draw; per-image confusion matrices are kept, as for attacks.

:func:`search_corruptions` (``kind = "corruption_search"``) lets Hypothesis draw the
corruption, a continuous severity, a seed and optionally a box, over the first
``images`` audited images, steers towards the lowest metric, shrinks a violation, and
bisects its severity down to the smallest one that still violates.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit import metrics
from audit.corruptions import CORRUPTIONS, corrupt
from audit.engine import seed_for
from audit.errors import EvaluationError
from audit.evaluations.per_image import PerImage
from audit.evaluations.search import Probe, database_key, run_search
from audit.metrics import predict
from audit.objects import object_counts
from audit.strategies import CorruptionParams, corruption_params, example_database

if TYPE_CHECKING:
    from audit.engine import Batch, Engine

#: bisection steps of a violation's severity: 5 / 2**10, about 0.005 of a severity level
BISECT_STEPS = 10
#: image names reported as the worst of an example
WORST_IMAGES = 3


@dataclass(frozen=True)
class CorruptionEvaluation(PerImage):
    """One corruption at one severity over the dataset slice."""

    corruption: str
    family: str
    severity: float
    per_image: torch.Tensor  # N x K x K int64 confusion matrices under the corruption
    sample_names: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]
    forward_passes: int
    seconds: float
    #: N x 3 x 4 per-image counts per object-size bucket under the corruption
    #: (:func:`audit.objects.object_counts`): small objects break first
    object_sizes: torch.Tensor | None = None

    @property
    def id(self) -> str:
        return f"{self.corruption}-s{self.severity:g}".replace(".", "p")

    @property
    def label(self) -> str:
        return f"{self.corruption} at severity {self.severity:g}"


def corruption_seeds(engine: Engine, name: str, indices: Sequence[int]) -> list[int]:
    """Per-image seeds of a deterministic corruption: the audit's seed, the corruption and
    the image's index (not the severity: every severity of a corruption draws the same
    noise, so the curve over severities is not jagged by resampling)."""
    return [seed_for(engine.seed, "corruption", name, int(i)) & 0x7FFFFFFF for i in indices]


def evaluate_corruption(engine: Engine, name: str, severity: float) -> CorruptionEvaluation:
    """``name`` at ``severity`` over the dataset slice, computed once per key and logged."""
    if name not in CORRUPTIONS:
        raise EvaluationError(f"unknown corruption {name!r}")
    parts = engine.key_parts("corruption", corruption=name, severity=float(severity))
    return engine.cached(
        parts, lambda: _compute(engine, name, float(severity)), log=True, sharded=True
    )


def _compute(engine: Engine, name: str, severity: float) -> CorruptionEvaluation:
    start, passes = time.perf_counter(), engine.forward_passes
    cms: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    names: list[str] = []
    sizes: list[tuple[int, int]] = []
    with torch.inference_mode():
        for batch in engine.batches():
            seeds = corruption_seeds(engine, name, batch.indices)
            images = corrupt(name, batch.images, severity, seeds=seeds)
            pred = predict(engine.forward(images, batch.names))
            cms.append(
                metrics.per_image_confusion(
                    pred, batch.masks, engine.num_classes, engine.ignore_index
                ).cpu()
            )
            counts.append(object_counts(engine.objects(batch), pred, batch.masks).cpu())
            names.extend(batch.names)
            sizes.extend([tuple(batch.images.shape[-2:])] * len(batch.names))
    if not cms:
        raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to corrupt")
    return CorruptionEvaluation(
        corruption=name,
        family=str(getattr(CORRUPTIONS[name], "family", "")),
        severity=severity,
        per_image=torch.cat(cms),
        sample_names=tuple(names),
        resolutions=tuple(sizes),
        forward_passes=engine.forward_passes - passes,
        seconds=time.perf_counter() - start,
        object_sizes=torch.cat(counts),
    )


# -- the search ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorruptionSearch:
    """What a search tried and found; parameters as plain dicts, ready for the record."""

    config: Mapping[str, Any]
    examples: int
    first: dict[str, Any] | None
    worst: dict[str, Any] | None
    #: the violation Hypothesis shrank to, then its severity bisected (``boundary``)
    shrunk: dict[str, Any] | None
    num_samples: int
    forward_passes: int
    seconds: float
    database: str | None


def subset(engine: Engine, count: int) -> list[Batch]:
    """The first ``count`` audited images, in batches kept for every example."""
    kept: list[Batch] = []
    total = 0
    for batch in engine.batches():
        take = min(len(batch.names), count - total)
        if take < len(batch.names):
            batch = replace(
                batch,
                images=batch.images[:take],
                masks=batch.masks[:take],
                names=batch.names[:take],
                indices=batch.indices[:take],
            )
        kept.append(batch)
        total += take
        if total >= count:
            break
    if not kept:
        raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to search on")
    return kept


def _confusions(engine: Engine, batches: Sequence[Batch], transform: Any) -> torch.Tensor:
    cms = []
    with torch.inference_mode():
        for batch in batches:
            pred = predict(engine.forward(transform(batch), batch.names))
            cms.append(
                metrics.per_image_confusion(
                    pred, batch.masks, engine.num_classes, engine.ignore_index
                ).cpu()
            )
    return torch.cat(cms)


def search_corruptions(engine: Engine, config: Mapping[str, Any]) -> CorruptionSearch:
    """The search of a ``corruption_search`` claim (its canonical parameters plus ``min``,
    ``max``, ``key`` and ``database``), computed once per key and logged."""
    parts = engine.key_parts("corruption_search", **{k: v for k, v in config.items()})
    return engine.cached(parts, lambda: _search(engine, config), log=True)


def _search(engine: Engine, config: Mapping[str, Any]) -> CorruptionSearch:
    start, passes = time.perf_counter(), engine.forward_passes
    batches = subset(engine, config["images"])
    names = [n for b in batches for n in b.names]
    metric = config["metric"]
    ratio = metric == "iou_ratio"
    fn = metrics.metric_function("miou" if ratio else metric, engine.class_names)
    clean = float(fn(_confusions(engine, batches, lambda b: b.images).sum(0))) if ratio else 1.0
    low, high = config.get("min"), config.get("max")

    def score(cms: torch.Tensor) -> tuple[float, list[str]]:
        value = float(fn(cms.sum(0))) / clean if clean else float("nan")
        per_image = np.asarray([float(fn(cm)) for cm in cms])
        order = np.argsort(np.nan_to_num(per_image, nan=np.inf), kind="stable")
        return value, [names[i] for i in order[:WORST_IMAGES]]

    def measure(params: CorruptionParams) -> Probe:
        engine.check_deadline()
        cms = _confusions(engine, batches, lambda b: params.apply(b.images, b.indices))
        value, worst = score(cms)
        bad = (low is not None and not value >= low) or (high is not None and not value <= high)
        # "higher is better" for the search's steering: a max-only claim is steered up
        steer = -value if low is None and high is not None else value
        return Probe(params, steer, bad, {"value": value, "worst_images": worst})

    strategy = corruption_params(
        config["corruptions"], config["severity"], region=config.get("region")
    )
    database = config.get("database")
    outcome = run_search(
        strategy,
        measure,
        max_examples=config["max_examples"],
        database=example_database(database),
        key=database_key("corruption_search", config["key"]),
        seed_value=seed_for(engine.seed, "corruption_search", config["key"]),
    )
    shrunk = None
    if outcome.shrunk is not None:
        shrunk = _as_dict(outcome.shrunk)
        shrunk["boundary"] = _bisect(outcome.shrunk, measure, config["severity"][0])
    return CorruptionSearch(
        config={k: v for k, v in config.items() if k not in ("key", "database")},
        examples=len(outcome.tried),
        first=_as_dict(outcome.first) if outcome.first else None,
        worst=_as_dict(outcome.worst) if outcome.worst else None,
        shrunk=shrunk,
        num_samples=len(names),
        forward_passes=engine.forward_passes - passes,
        seconds=time.perf_counter() - start,
        database=database,
    )


def _as_dict(probe: Probe) -> dict[str, Any]:
    return {
        "params": probe.params.to_dict(),
        "describe": probe.params.describe(),
        "value": probe.extra["value"],
        "worst_images": list(probe.extra["worst_images"]),
    }


def _bisect(found: Probe, measure: Any, low: float) -> dict[str, Any]:
    """The smallest severity at which the shrunk example's corruption, seed and box still
    violate, by bisection between the range's low end and the shrunk severity (it assumes
    the metric falls as severity grows, as it does for every corruption here)."""
    params: CorruptionParams = found.params
    bad = params.severity
    result = measure(replace(params, severity=low))
    if result.violates:
        return {"severity": low, "resolution": 0.0, "value": result.extra["value"], "steps": 1}
    good = low
    best = found
    for _ in range(BISECT_STEPS):
        if bad - good <= 1e-9:
            break
        mid = (good + bad) / 2
        result = measure(replace(params, severity=mid))
        if result.violates:
            bad, best = mid, result
        else:
            good = mid
    return {
        "severity": bad,
        "resolution": bad - good,
        "value": best.extra["value"],
        "worst_images": list(best.extra["worst_images"]),
        "steps": BISECT_STEPS,
    }

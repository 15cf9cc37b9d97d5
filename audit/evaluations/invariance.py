"""The invariance search: perturbations drawn inside a norm ball must not change what they must
not change.

Hypothesis draws a perturbation's shape (dense, sparse, patch, low-frequency) and a few
numbers (:func:`audit.strategies.perturbations`); it is built on the device, applied to the
first ``images`` audited images, and the predictions are compared with the clean ones (the
model's own, not the labels: invariance is about the prediction).

* With a Lipschitz certifier, a pixel whose certified L2 radius exceeds the L2 norm of the
  perturbation actually applied (after clipping) must keep its prediction; the score is
  minus the number of such pixels that changed (a falsification search that complements the
  gradient attacks of the soundness claims).
* Without one, the score is the share of pixels that kept their prediction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit.certify import margins
from audit.engine import seed_for
from audit.evaluations.corruption import subset
from audit.evaluations.lipschitz import KAPPA, LipschitzSource, resolve_lipschitz
from audit.evaluations.search import Probe, database_key, run_search
from audit.metrics import predict
from audit.strategies import Perturbation, example_database, perturbations

if TYPE_CHECKING:
    from audit.engine import Engine


@dataclass(frozen=True)
class InvarianceSearch:
    config: Mapping[str, Any]
    lipschitz: LipschitzSource | None
    examples: int
    #: pixels certified at the radius of the first example, of all pixels searched
    certified_pixels: int
    pixels: int
    first: dict[str, Any] | None
    worst: dict[str, Any] | None
    shrunk: dict[str, Any] | None
    #: the shrunk counterexample's arrays: clean input, perturbation, changed-pixel mask
    artifacts: dict[str, np.ndarray]
    num_samples: int
    forward_passes: int
    seconds: float


def search_invariance(engine: Engine, config: Mapping[str, Any]) -> InvarianceSearch:
    """The search of an ``invariance`` claim, computed once per key and logged."""
    parts = engine.key_parts("invariance", **dict(config))
    return engine.cached(parts, lambda: _search(engine, config), log=True)


def _search(engine: Engine, config: Mapping[str, Any]) -> InvarianceSearch:
    start, passes = time.perf_counter(), engine.forward_passes
    lipschitz = None
    if config["certifier"] == "lipschitz":
        # Not refused when a search contradicts the constant: the invariance search is one
        # more way to refute it, and says so with a counterexample.
        lipschitz = resolve_lipschitz(engine, config["lipschitz"], falsify=False)
    batches = subset(engine, config["images"])
    names = [n for b in batches for n in b.names]
    clean, radii = [], []
    with torch.no_grad(), margins.full_float32():
        for batch in batches:
            logits = engine.forward(batch.images, batch.names)
            clean.append(predict(logits))
            if lipschitz is not None:
                radii.append(margins.certified_radius(logits, lipschitz.value, kappa=KAPPA))
    limit_low, limit_high = config.get("min"), config.get("max")
    keep_arrays: dict[int, dict[str, np.ndarray]] = {}

    def measure(p: Perturbation) -> Probe:
        engine.check_deadline()
        changed_total = violations = pixels = 0
        worst = (-1, 0)  # (count, flat image index)
        arrays = None
        offset = 0
        with torch.no_grad():
            for b, batch in enumerate(batches):
                adv = p.apply(batch.images)
                pred = predict(engine.forward(adv, batch.names))
                changed = pred != clean[b]
                pixels += changed.numel()
                changed_total += int(changed.sum())
                bad = changed
                if lipschitz is not None:
                    norm = (adv - batch.images).double().flatten(1).norm(dim=1)
                    bad = changed & (radii[b] > norm.view(-1, 1, 1))
                per_image = bad.flatten(1).sum(1)
                violations += int(per_image.sum())
                j = int(per_image.argmax())
                if int(per_image[j]) > worst[0]:
                    worst = (int(per_image[j]), offset + j)
                    arrays = {
                        "input": batch.images[j].cpu().numpy(),
                        "perturbation": (adv[j] - batch.images[j]).cpu().numpy(),
                        "changed": bad[j].cpu().numpy(),
                    }
                offset += len(batch.names)
        if lipschitz is not None:
            value = float(violations)
            score = -value
        else:
            value = 1.0 - changed_total / pixels if pixels else float("nan")
            score = value
        violates = (limit_low is not None and not value >= limit_low) or (
            limit_high is not None and not value <= limit_high
        )
        if violates and arrays is not None:
            # only the latest violation's arrays: the last one Hypothesis runs is the shrunk one
            keep_arrays.clear()
            keep_arrays[id(p)] = arrays
        extra = {"value": value, "changed": changed_total, "worst_image": names[worst[1]]}
        return Probe(p, score, violates, extra)

    outcome = run_search(
        perturbations(config["eps"], config["norm"], config["shapes"]),
        measure,
        max_examples=config["max_examples"],
        database=example_database(config.get("database")),
        key=database_key("invariance", config["key"]),
        seed_value=seed_for(engine.seed, "invariance", config["key"]),
    )
    certified = 0
    if lipschitz is not None:
        for r, batch in zip(radii, batches, strict=True):
            # an Linf ball of radius e reaches L2 norm e * sqrt(3HW)
            scale = 1.0 if config["norm"] == "l2" else batch.images[0].numel() ** 0.5
            certified += int((r > config["eps"] * scale).sum())
    total = sum(int(c.numel()) for c in clean)
    shrunk = _as_dict(outcome.shrunk) if outcome.shrunk else None
    artifacts = keep_arrays.get(id(outcome.shrunk.params), {}) if outcome.shrunk else {}
    return InvarianceSearch(
        config={k: v for k, v in config.items() if k not in ("key", "database")},
        lipschitz=lipschitz,
        examples=len(outcome.tried),
        certified_pixels=certified,
        pixels=total,
        first=_as_dict(outcome.first) if outcome.first else None,
        worst=_as_dict(outcome.worst) if outcome.worst else None,
        shrunk=shrunk,
        artifacts=artifacts,
        num_samples=len(names),
        forward_passes=engine.forward_passes - passes,
        seconds=time.perf_counter() - start,
    )


def _as_dict(probe: Probe) -> dict[str, Any]:
    return {
        "params": probe.params.to_dict(),
        "describe": probe.params.describe(),
        "value": probe.extra["value"],
        "changed_pixels": probe.extra["changed"],
        "worst_image": probe.extra["worst_image"],
    }

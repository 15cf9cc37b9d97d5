"""Attack evaluations: one attack over the engine's dataset slice, reduced to additive state.

What is kept per (attack, parameters, threat) is additive state, as for clean images: per-image
confusion matrices under attack, per-image counts of flipped pixels and of ground-truth
objects found per size bucket, perturbation norms, gradient health counts, pass counts, and
the few worst images as evidence for the report.
Scores, IoU ratios and diagnostics are computed from that state later, by claims and the
record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit import metrics
from audit.attacks import build_attack
from audit.attacks.base import Attack, AttackContext
from audit.engine import cache_key
from audit.errors import ClaimTimeout, EvaluationError, ThreatOutOfRange
from audit.evaluations.guard import ModelGuard
from audit.evaluations.per_image import PerImage
from audit.metrics import predict
from audit.model import all_finite
from audit.objects import Objects, object_counts
from audit.threat import ThreatModel

if TYPE_CHECKING:
    from audit.engine import Batch, Engine


@dataclass(frozen=True)
class AdversarialExample:
    """One attacked image kept for the report, as arrays ready to draw."""

    name: str
    image: np.ndarray  # H x W x 3 uint8
    adversarial: np.ndarray  # H x W x 3 uint8
    perturbation: np.ndarray  # H x W x 3 uint8, amplified around grey
    mask: np.ndarray  # H x W int64
    prediction_clean: np.ndarray  # H x W int64
    prediction_adv: np.ndarray  # H x W int64
    pixel_accuracy_clean: float
    pixel_accuracy_adv: float


@dataclass(frozen=True)
class GradientHealth:
    """How many input gradients were all zero or not finite (signs of gradient masking)."""

    passes: int = 0
    image_gradients: int = 0
    zero: int = 0
    nonfinite: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "passes": self.passes,
            "image_gradients": self.image_gradients,
            "zero": self.zero,
            "nonfinite": self.nonfinite,
        }


@dataclass(frozen=True)
class AttackEvaluation(PerImage):
    """One attack at one threat model over the dataset slice."""

    attack: str
    library: str
    family: str
    params: dict[str, Any]
    threat: ThreatModel
    per_image: torch.Tensor  # N x K x K int64 confusion matrices under attack
    flipped: torch.Tensor  # N: labelled pixels right on clean images and wrong under attack
    clean_correct: torch.Tensor  # N: labelled pixels right on clean images
    linf: torch.Tensor  # N: Linf norm of each image's perturbation
    l2: torch.Tensor  # N: L2 norm of each image's perturbation
    resolutions: tuple[tuple[int, int], ...]
    gradients: GradientHealth
    forward_passes: int
    backward_passes: int
    seconds: float
    #: how many epsilons one computation served (a single-step sweep); passes and seconds
    #: are those of the whole computation
    shared_by: int = 1
    examples: tuple[AdversarialExample, ...] = field(default=())
    #: N x 3 x 4 int64 counts of ground-truth objects per size bucket under attack
    #: (audit.objects)
    object_sizes: torch.Tensor | None = None
    #: an ensemble's winning member per image, as (image name, member) in dataset order;
    #: empty for single attacks
    winners: tuple[tuple[str, str], ...] = field(default=())

    @property
    def id(self) -> str:
        """Unique and filesystem-safe: names the evaluation in results and on disk."""
        digest = hashlib.sha256(repr((self.attack, sorted(self.params.items()))).encode())
        eps = self.threat.eps.text.replace("/", "-").replace(".", "p")
        name = self.attack.replace(":", "-").lower()
        return f"{name}-{self.threat.norm}-{eps}-{digest.hexdigest()[:6]}"

    @property
    def success_rate(self) -> float:
        """Fraction of the pixels the model got right that the attack flipped."""
        correct = int(self.clean_correct.sum())
        return float(self.flipped.sum()) / correct if correct else float("nan")

    @property
    def label(self) -> str:
        """The attack and its parameters in words, as failure messages print them."""
        shown = {k: v for k, v in self.params.items() if v is not None}
        params = ", ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.attack} {self.threat.describe()}" + (f", {params}" if params else "")


class Counters:
    """Forward/backward passes and gradient health while one evaluation runs.

    Gradient checks accumulate on the device and are read once at the end: reading them per
    step would synchronise host and device at every step and stall the attack.
    """

    def __init__(self) -> None:
        self.backward = 0
        self.passes = 0
        self.image_gradients = 0
        self._zero: torch.Tensor | int = 0
        self._nonfinite: torch.Tensor | int = 0

    def count_backward(self, grad: torch.Tensor) -> None:
        self.backward += 1

    def watch(self, grad: torch.Tensor) -> None:
        flat = grad.detach().flatten(1)
        finite = torch.isfinite(flat).all(1)
        self.passes += 1
        self.image_gradients += int(flat.shape[0])
        self._nonfinite = self._nonfinite + (~finite).sum()
        self._zero = self._zero + ((flat == 0).all(1) & finite).sum()

    def health(self) -> GradientHealth:
        return GradientHealth(
            self.passes, self.image_gradients, int(self._zero), int(self._nonfinite)
        )


def attack_context(
    engine: Engine, generator: torch.Generator, counters: Counters | None = None
) -> AttackContext:
    """What an attack needs to run on ``engine``'s model: its counted forward pass, the
    dataset's classes and ignore label, ``generator``, and the engine's step watch (progress
    and time budget).  With ``counters``, backward passes are counted and every input
    gradient is watched (gradient health); without, neither is."""
    return AttackContext(
        model=engine.attack_forward(counters.count_backward if counters is not None else _ignore),
        ignore_index=engine.ignore_index,
        num_classes=engine.num_classes,
        generator=generator,
        on_gradient=counters.watch if counters is not None else _ignore,
        on_step=engine.attack_step,
    )


def _ignore(grad: torch.Tensor) -> None:
    pass


class _Accumulator:
    """Per-image state of one threat model, filled batch by batch."""

    def __init__(self, max_examples: int) -> None:
        self.cms: list[torch.Tensor] = []
        self.flipped: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.linf: list[torch.Tensor] = []
        self.l2: list[torch.Tensor] = []
        self.sizes: list[tuple[int, int]] = []
        self.object_sizes: list[torch.Tensor] = []
        self.names: list[str] = []
        #: filled through ``ctx.on_winners`` by ensembles, one member name per image
        self.winners: list[str] = []
        self.max_examples = max_examples
        self.worst: list[tuple[float, int, dict[str, Any]]] = []

    def update(
        self,
        batch: Batch,
        adv: torch.Tensor,
        clean_pred: torch.Tensor,
        adv_pred: torch.Tensor,
        num_classes: int,
        ignore_index: int,
        objects: Objects | None = None,
    ) -> None:
        labelled = batch.masks != ignore_index
        right = (clean_pred == batch.masks) & labelled
        wrong_adv = (adv_pred != batch.masks) & labelled
        cms = metrics.per_image_confusion(adv_pred, batch.masks, num_classes, ignore_index).cpu()
        self.cms.append(cms)
        self.flipped.append((right & wrong_adv).flatten(1).sum(1).cpu())
        self.correct.append(right.flatten(1).sum(1).cpu())
        delta = (adv - batch.images).flatten(1)
        self.linf.append(delta.abs().amax(1).cpu())
        self.l2.append(delta.norm(dim=1).cpu())
        self.sizes.extend([tuple(batch.images.shape[-2:])] * len(batch.names))
        self.names.extend(batch.names)
        if objects is not None:
            self.object_sizes.append(object_counts(objects, adv_pred, batch.masks).cpu())
        if self.max_examples:
            self._keep_worst(batch, adv, clean_pred, adv_pred, cms, right)

    def _keep_worst(self, batch, adv, clean_pred, adv_pred, cms, right) -> None:
        totals = cms.flatten(1).sum(1).clamp(min=1)
        adv_acc = cms.diagonal(dim1=1, dim2=2).sum(1) / totals
        clean_acc = right.flatten(1).sum(1).cpu() / totals
        for j in range(len(batch.names)):
            score = float(adv_acc[j])
            index = batch.indices[j]
            if len(self.worst) >= self.max_examples and (score, index) >= self.worst[-1][:2]:
                continue
            # Candidates stay device tensors (compact uint8 images) until the evaluation
            # ends: only the final few are converted for drawing.
            candidate = _capture(batch, j, adv[j], clean_pred[j], adv_pred[j])
            candidate["pixel_accuracy_clean"] = float(clean_acc[j])
            candidate["pixel_accuracy_adv"] = score
            self.worst.append((score, index, candidate))
            self.worst.sort(key=lambda item: (item[0], item[1]))
            del self.worst[self.max_examples :]

    def result(self, **fields: Any) -> AttackEvaluation:
        return AttackEvaluation(
            per_image=torch.cat(self.cms),
            flipped=torch.cat(self.flipped),
            clean_correct=torch.cat(self.correct),
            linf=torch.cat(self.linf),
            l2=torch.cat(self.l2),
            resolutions=tuple(self.sizes),
            examples=tuple(_materialise(candidate) for _, _, candidate in self.worst),
            object_sizes=torch.cat(self.object_sizes) if self.object_sizes else None,
            winners=tuple(zip(self.names, self.winners, strict=True)) if self.winners else (),
            **fields,
        )


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def _capture(batch: Batch, j: int, adv, clean_pred, adv_pred) -> dict[str, Any]:
    delta = adv - batch.images[j]
    scale = delta.abs().amax().clamp(min=1e-12)
    # Amplified so the largest change reaches the full range around mid-grey.
    return {
        "name": batch.names[j],
        "image": _to_uint8(batch.images[j]),
        "adversarial": _to_uint8(adv),
        "perturbation": _to_uint8(0.5 + 0.5 * delta / scale),
        "mask": batch.masks[j].clone(),
        "prediction_clean": clean_pred.clone(),
        "prediction_adv": adv_pred.clone(),
    }


def _materialise(candidate: dict[str, Any]) -> AdversarialExample:
    return AdversarialExample(
        **{
            key: value.cpu().numpy() if isinstance(value, torch.Tensor) else value
            for key, value in candidate.items()
        }
    )


def evaluate_attack(
    engine: Engine,
    name: str,
    params: Mapping[str, Any],
    threat: ThreatModel,
    *,
    sweep: Sequence[ThreatModel] = (),
) -> AttackEvaluation:
    """Attack ``name`` with ``params`` at ``threat`` over the dataset slice, computed once
    per key; a parameter the attack does not take is a ``TypeError`` before any work.

    Attacks that share a sweep's work (the single-step family: one gradient serves every
    epsilon) compute all of ``sweep`` that is not cached yet in the same pass.
    """
    attack = build_attack(name, params)
    # The attack's own parameters, defaults filled in: claims that spell the same attack
    # differently (steps given or defaulted) share one computation.
    canonical = {k: attack.params[k] for k in sorted(attack.params)}

    def parts(t: ThreatModel) -> dict[str, Any]:
        return engine.key_parts(
            "attack",
            attack=name,
            params=canonical,
            norm=t.norm,
            eps=t.eps.value,
            **engine.attack_parts(),
        )

    if not engine.is_cached(parts(threat)) and attack.shares_grid:
        todo = [threat] + [
            t
            for t in sweep
            if t != threat and t.norm == threat.norm and not engine.is_cached(parts(t))
        ]
        if len(todo) > 1:
            try:
                results = engine.sharded(
                    lambda: run_attack(engine, attack, name, todo),
                    key=cache_key(parts(threat)),
                    label=f"attack {name} {threat.norm} sweep of {len(todo)}",
                )
            except ThreatOutOfRange:
                # Another epsilon of the sweep is too large: this one runs alone below
                # (and is refused on its own if it is too large itself).
                pass
            except ClaimTimeout:
                engine.timed_out.add(cache_key(parts(threat)))
                raise
            except Exception as exc:
                engine.store(parts(threat), exc)
                raise
            else:
                for t, result in zip(todo, results, strict=True):
                    engine.store(parts(t), result, log=True)
    return engine.cached(
        parts(threat),
        lambda: run_attack(engine, attack, name, [threat])[0],
        log=True,
        sharded=True,
    )


def evaluate_noise(
    engine: Engine, threat: ThreatModel, *, sweep: Sequence[ThreatModel] = ()
) -> AttackEvaluation:
    """Random noise of the same norm and size: the baseline an attack must beat.  The
    epsilons of ``sweep`` not computed yet share the pass (and the random direction)."""
    return evaluate_attack(engine, "noise", {}, threat, sweep=sweep)


def noise_key(engine: Engine, threat: ThreatModel) -> dict[str, Any]:
    """The cache key parts of :func:`evaluate_noise` (to ask whether it was computed)."""
    return engine.key_parts(
        "attack",
        attack="noise",
        params={},
        norm=threat.norm,
        eps=threat.eps.value,
        **engine.attack_parts(),
    )


def run_attack(
    engine: Engine, attack: Attack, name: str, threats: Sequence[ThreatModel]
) -> list[AttackEvaluation]:
    """Evaluate ``attack`` at each threat model; a grid-sharing attack computes them together."""
    threats = list(threats)
    guard = ModelGuard(engine.module)
    counters = Counters()
    forward_start = engine.forward_passes
    accumulators = [_Accumulator(engine.attack_examples) for _ in threats]
    start = time.perf_counter()
    for batch in engine.batches():
        # Each batch knows its size: an L2 radius beyond its diameter is refused before work.
        for threat in threats:
            engine.check_radius(threat, batch.images.shape[1:])
        ctx = attack_context(
            engine, engine.generator(name, sorted(attack.params.items()), batch.number), counters
        )
        with torch.no_grad():
            # No read-back before the attack: the host queues the attack's kernels while the
            # device still runs this pass.  Finiteness is checked with the results below.
            clean_logits = engine.forward(batch.images, batch.names, check_finite=False)
            clean_finite = all_finite(clean_logits)
            clean_pred = predict(clean_logits)
            del clean_logits
            # The ground-truth objects are the same for every threat model: found once.
            objects = engine.objects(batch)
        if len(threats) > 1 and attack.shares_grid:
            with engine.attack_autocast():
                advs = attack.grid(batch.images, batch.masks, threats, ctx)
        else:
            # Each threat's accumulator hears which ensemble member won each image.
            with engine.attack_autocast():
                advs = [
                    attack(
                        batch.images,
                        batch.masks,
                        threat=t,
                        ctx=dataclasses.replace(ctx, on_winners=accumulator.winners.extend),
                    )
                    for t, accumulator in zip(threats, accumulators, strict=True)
                ]
        if not bool(clean_finite):
            with torch.no_grad():
                engine.forward(batch.images, batch.names)  # raises, naming the samples
        for accumulator, adv in zip(accumulators, advs, strict=True):
            # autocast may hand back a reduced dtype: measured in full precision all the same
            adv = adv.float()
            with torch.no_grad():
                adv_pred = predict(engine.forward(adv, batch.names))
            accumulator.update(
                batch,
                adv,
                clean_pred,
                adv_pred,
                engine.num_classes,
                engine.ignore_index,
                objects,
            )
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    seconds = time.perf_counter() - start
    guard.check(name)
    if not accumulators[0].cms:
        raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to attack")
    share = len(threats)
    return [
        accumulator.result(
            attack=name,
            library=attack.library,
            family=attack.family,
            params=dict(attack.params),
            threat=threat,
            gradients=counters.health(),
            forward_passes=engine.forward_passes - forward_start,
            backward_passes=counters.backward,
            seconds=seconds,
            shared_by=share,
        )
        for accumulator, threat in zip(accumulators, threats, strict=True)
    ]

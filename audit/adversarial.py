"""Adversarial evaluations: run one attack over the engine's dataset slice, reduce to state.

What is kept per (attack, parameters, threat) is additive state, as for clean images: per-image
confusion matrices under attack, per-image counts of flipped pixels, perturbation norms,
gradient health counts, pass counts, and the few worst images as evidence for the report.
Scores, IoU ratios and diagnostics are computed from that state later.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit import metrics
from audit.errors import EvaluationError
from audit.threat import ThreatModel

if TYPE_CHECKING:
    from audit.attacks.base import Attack, MinNormAttack
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
class AttackEvaluation:
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

    @property
    def id(self) -> str:
        """Unique and filesystem-safe: names the evaluation in results and on disk."""
        digest = hashlib.sha256(repr((self.attack, sorted(self.params.items()))).encode())
        eps = self.threat.eps.text.replace("/", "-").replace(".", "p")
        name = self.attack.replace(":", "-").lower()
        return f"{name}-{self.threat.norm}-{eps}-{digest.hexdigest()[:6]}"

    @property
    def num_samples(self) -> int:
        return int(self.per_image.shape[0])

    @property
    def resolution(self) -> tuple[int, int] | None:
        sizes = set(self.resolutions)
        return next(iter(sizes)) if len(sizes) == 1 else None

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


@dataclass(frozen=True)
class MinNormEvaluation:
    """A minimal-norm attack's radii over the dataset slice."""

    attack: str
    params: dict[str, Any]
    norm: str
    image_radius: torch.Tensor  # N: norm of the perturbation; inf where the attack failed
    pixel_radius: torch.Tensor  # flat: per labelled pixel, radius along the attack's path
    reached: torch.Tensor  # N bool: whether the attack met its flip threshold
    forward_passes: int
    backward_passes: int
    seconds: float

    @property
    def id(self) -> str:
        digest = hashlib.sha256(repr((self.attack, sorted(self.params.items()))).encode())
        return f"{self.attack.replace(':', '-').lower()}-{self.norm}-{digest.hexdigest()[:6]}"

    @property
    def num_samples(self) -> int:
        return int(self.image_radius.shape[0])


class _Counters:
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


def seed_for(base_seed: int, *parts: Any) -> int:
    """A seed that depends only on the run's seed and what is computed, not on claim order."""
    digest = hashlib.sha256(repr((base_seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _Accumulator:
    """Per-image state of one threat model, filled batch by batch."""

    def __init__(self, max_examples: int) -> None:
        self.cms: list[torch.Tensor] = []
        self.flipped: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.linf: list[torch.Tensor] = []
        self.l2: list[torch.Tensor] = []
        self.sizes: list[tuple[int, int]] = []
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


#: words summed per chunk in :func:`_digests`: bounds its temporary device memory to about
#: 50 bytes a word (100 MiB), at a handful of kernel launches per chunk
_DIGEST_CHUNK = 1 << 21


def _digests(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Two position-weighted sums of each tensor's raw words, computed where it lives.

    Any change of any bit changes them (barring a deliberate collision).  Tensors are
    concatenated in chunks and summed per segment (prefix sums), so a network of hundreds of small
    tensors costs a handful of kernel launches and one transfer per chunk, not thousands:
    hashing weights on the host, or one reduction per tensor, would cost more than a short
    attack.  Integer sums wrap around exactly, so the result does not depend on order.
    """
    out: list[tuple[int, int]] = [(0, 0)] * len(tensors)
    groups: dict[tuple[torch.device, bool], list[tuple[int, torch.Tensor]]] = {}
    for i, tensor in enumerate(tensors):
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        wide = flat.element_size() % 4 == 0
        words = flat.view(torch.int32) if wide else flat.view(torch.uint8)
        groups.setdefault((flat.device, wide), []).append((i, words))
    for (device, _), members in groups.items():
        chunk: list[tuple[int, torch.Tensor]] = []
        size = 0
        for member in [*members, None]:
            if member is not None and (not chunk or size + member[1].numel() <= _DIGEST_CHUNK):
                chunk.append(member)
                size += member[1].numel()
                continue
            sizes = torch.tensor([w.numel() for _, w in chunk], device=device)
            segment = torch.repeat_interleave(
                torch.arange(len(chunk), device=device), sizes, output_size=size
            )
            starts = torch.cumsum(sizes, 0) - sizes
            position = torch.arange(size, device=device) - starts[segment] + 1
            words = torch.cat([w for _, w in chunk]).to(torch.int64)
            # Segment sums as differences of prefix sums: scatter-adds (index_add_) of
            # millions of words into a few slots serialise on atomics and cost milliseconds.
            prefix = torch.zeros(2, size + 1, dtype=torch.int64, device=device)
            torch.cumsum(words, 0, out=prefix[0, 1:])
            torch.cumsum(words * position, 0, out=prefix[1, 1:])
            ends = starts + sizes
            totals = prefix[:, ends] - prefix[:, starts]
            for (i, _), a, b in zip(chunk, *totals.cpu().tolist(), strict=True):
                out[i] = (a, b)
            if member is not None:
                chunk, size = [member], member[1].numel()
    return out


class ModelGuard:
    """Proves an attack left the audited model as it found it, cheaply enough for every run.

    Every parameter and buffer is identified by object and storage and summarised by
    :func:`_digests` (``param.data.add_`` and BatchNorm's running statistics change values
    without bumping autograd's version counter, so values are what is compared); ``.grad``
    is recorded the same way, and every ``training`` and ``requires_grad`` flag.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.state = self._state()

    def _state(self) -> dict[str, tuple]:
        params = list(self.module.named_parameters())
        buffers = list(self.module.named_buffers())
        grads = [(n, p.grad) for n, p in params if p.grad is not None]
        digests = iter(_digests([t for _, t in params + buffers + grads]))
        state: dict[str, tuple] = {}
        for name, p in params:
            state[name] = (id(p), p.data_ptr(), p.requires_grad, next(digests))
        for name, b in buffers:
            state[name] = (id(b), b.data_ptr(), next(digests))
        for name, _ in params:
            state[f"grad:{name}"] = (None,)
        for name, grad in grads:
            state[f"grad:{name}"] = (id(grad), next(digests))
        for name, sub in self.module.named_modules():
            state[f"training:{name or '<root>'}"] = (sub.training,)
        return state

    def changes(self) -> list[str]:
        """Names of parameters, buffers and flags that differ from the snapshot."""
        now = self._state()
        return sorted(k for k in set(now) | set(self.state) if now.get(k) != self.state.get(k))

    def check(self, attack: str) -> None:
        changed = self.changes()
        if changed:
            raise EvaluationError(
                f"attack {attack!r} changed the audited model ({', '.join(changed[:5])}"
                f"{', ...' if len(changed) > 5 else ''}); its results are discarded"
            )


def run_attack(
    engine: Engine, attack: Attack, name: str, threats: Sequence[ThreatModel]
) -> list[AttackEvaluation]:
    """Evaluate ``attack`` at each threat model; a grid-sharing attack computes them together."""
    from audit.attacks.base import AttackContext

    threats = list(threats)
    guard = ModelGuard(engine.module)
    counters = _Counters()
    forward_start = engine.forward_passes
    accumulators = [_Accumulator(engine.attack_examples) for _ in threats]
    start = time.perf_counter()
    for b, batch in enumerate(engine.batches()):
        # Each batch knows its size: an L2 radius beyond its diameter is refused before work.
        for threat in threats:
            engine.check_radius(threat, batch.images.shape[1:])
        generator = torch.Generator(device=engine.device)
        generator.manual_seed(seed_for(engine.seed, name, sorted(attack.params.items()), b))
        ctx = AttackContext(
            model=engine.attack_forward(counters.count_backward),
            ignore_index=engine.ignore_index,
            num_classes=engine.num_classes,
            generator=generator,
            on_gradient=counters.watch,
            on_step=engine.attack_step,
        )
        with torch.no_grad():
            # No read-back before the attack: the host queues the attack's kernels while the
            # device still runs this pass.  Finiteness is checked with the results below.
            clean_logits = engine.forward(batch.images, batch.names, check_finite=False)
            clean_finite = torch.isfinite(clean_logits).all()
            clean_pred = clean_logits.argmax(1)
            del clean_logits
        if len(threats) > 1 and attack.shares_grid:
            advs = attack.grid(batch.images, batch.masks, threats, ctx)
        else:
            advs = [attack(batch.images, batch.masks, threat=t, ctx=ctx) for t in threats]
        if not bool(clean_finite):
            with torch.no_grad():
                engine.forward(batch.images, batch.names)  # raises, naming the samples
        for accumulator, adv in zip(accumulators, advs, strict=True):
            with torch.no_grad():
                adv_pred = engine.forward(adv, batch.names).argmax(1)
            accumulator.update(
                batch, adv, clean_pred, adv_pred, engine.num_classes, engine.ignore_index
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


def run_min_norm(
    engine: Engine,
    attack: MinNormAttack,
    name: str,
    norm: str,
    radius_steps: int,
    adv_threshold: float,
) -> MinNormEvaluation:
    """Per-image and per-pixel empirical radii of a minimal-norm attack."""
    from audit.attacks.base import AttackContext
    from audit.attacks.radius import image_radius, pixel_radii

    guard = ModelGuard(engine.module)
    counters = _Counters()
    forward_start = engine.forward_passes
    images_r: list[torch.Tensor] = []
    pixels_r: list[torch.Tensor] = []
    reached: list[torch.Tensor] = []
    start = time.perf_counter()
    for b, batch in enumerate(engine.batches()):
        generator = torch.Generator(device=engine.device)
        generator.manual_seed(seed_for(engine.seed, name, sorted(attack.params.items()), b))
        model = engine.attack_forward(counters.count_backward)
        ctx = AttackContext(
            model=model,
            ignore_index=engine.ignore_index,
            num_classes=engine.num_classes,
            generator=generator,
            on_gradient=counters.watch,
            on_step=engine.attack_step,
        )
        adv = attack(batch.images, batch.masks, norm=norm, ctx=ctx)
        labelled = batch.masks != engine.ignore_index
        with torch.no_grad():
            clean_pred = engine.forward(batch.images, batch.names).argmax(1)
            adv_pred = engine.forward(adv, batch.names).argmax(1)
            radii = pixel_radii(
                _no_grad(model),
                batch.images,
                adv,
                norm=norm,
                steps=radius_steps,
                reference=clean_pred,
            )
        # A pixel the model already gets wrong has radius 0: no perturbation is needed.
        radii = torch.where(clean_pred == batch.masks, radii, torch.zeros_like(radii))
        right = (clean_pred == batch.masks) & labelled
        flipped = (adv_pred != batch.masks) & right
        fraction = flipped.flatten(1).sum(1) / right.flatten(1).sum(1).clamp(min=1)
        ok = fraction >= adv_threshold
        norms = image_radius(batch.images, adv, norm)
        images_r.append(torch.where(ok, norms, torch.full_like(norms, float("inf"))).cpu())
        pixels_r.append(radii[labelled].float().cpu())
        reached.append(ok.cpu())
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    seconds = time.perf_counter() - start
    guard.check(name)
    if not images_r:
        raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to attack")
    return MinNormEvaluation(
        attack=name,
        params=dict(attack.params),
        norm=norm,
        image_radius=torch.cat(images_r),
        pixel_radius=torch.cat(pixels_r),
        reached=torch.cat(reached),
        forward_passes=engine.forward_passes - forward_start,
        backward_passes=counters.backward,
        seconds=seconds,
    )


def _no_grad(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], Any]:
    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return call

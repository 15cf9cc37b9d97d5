"""The engine: owns device, batching, seeding, and a cache of computed evaluations.

Claims never run the model themselves; they ask the engine, which computes each
evaluation once per key (everything the result depends on) and hands the same result
to every claim that needs it.  The engine knows nothing about pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from audit import metrics
from audit.budget import Budget
from audit.errors import ClaimTimeout, ConfigError, EvaluationError, ThreatOutOfRange
from audit.threat import ThreatModel, radius_beyond_image

if TYPE_CHECKING:
    from audit.adversarial import AttackEvaluation, MinNormEvaluation
    from audit.claims.base import ClaimSpec
    from audit.data.base import SegmentationDataset
    from audit.model import LoadedModel

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but is not available here", key="device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) exist",
                key="device",
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("MPS was requested but is not available here", key="device")
    return device


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # N x 3 x H x W on the engine's device, [0, 1]
    masks: torch.Tensor  # N x H x W int64 on the engine's device
    names: tuple[str, ...]
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Example:
    """One image kept for the report, as arrays ready to draw."""

    name: str
    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W int64 (ignore index kept)
    prediction: np.ndarray  # H x W int64
    pixel_accuracy: float


@dataclass(frozen=True)
class CleanEvaluation:
    """Predictions on unperturbed images, reduced to additive state."""

    per_image: torch.Tensor  # N x K x K int64 confusion matrices
    sample_names: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]
    examples: tuple[Example, ...] = field(default=())

    @property
    def num_samples(self) -> int:
        return int(self.per_image.shape[0])

    @property
    def confusion(self) -> torch.Tensor:
        return self.per_image.sum(0)

    @property
    def num_pixels(self) -> int:
        return int(self.per_image.sum())

    @property
    def resolution(self) -> tuple[int, int] | None:
        """The common input size, or ``None`` when images differ in size."""
        sizes = set(self.resolutions)
        return next(iter(sizes)) if len(sizes) == 1 else None


def cache_key(parts: Mapping[str, Any]) -> str:
    """Hash of a canonical JSON of everything a result depends on."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Engine:
    """Runs one model over one dataset slice and caches what it computes."""

    def __init__(
        self,
        model: LoadedModel,
        dataset: SegmentationDataset,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        batch_size: int = 8,
        limit: int | None = None,
        bootstrap_resamples: int = 1000,
        confidence: float = 0.95,
        examples: int = 4,
        attack_examples: int = 3,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.device = torch.device(device)
        self.seed = seed
        self.batch_size = batch_size
        self.num_samples = len(dataset) if limit is None else min(limit, len(dataset))
        self.bootstrap_resamples = bootstrap_resamples
        self.confidence = confidence
        self.max_examples = examples
        self.attack_examples = min(attack_examples, examples)
        self.forward_passes = 0
        self._cache: dict[str, Any] = {}
        #: successful adversarial evaluations by cache key, in the order they were computed
        self.attack_evaluations: dict[str, AttackEvaluation] = {}
        self.min_norm_evaluations: dict[str, MinNormEvaluation] = {}
        #: certification results (audit.certification), for the report
        self.certifications: dict[str, Any] = {}
        #: certificate-soundness results (audit.soundness), for the report
        self.soundness: dict[str, Any] = {}
        self._classes_checked = False
        #: the running claim's wall-clock budget (:meth:`deadline`), checked cooperatively
        self.budget: Budget | None = None
        #: cache keys of evaluations a budget stopped: never cached, computed afresh on demand
        self.timed_out: set[str] = set()
        self._first_shape: tuple[int, ...] | None = None
        #: called with {"samples_done", "samples_total"} before each batch, so the session
        #: can rewrite its partial record while a long evaluation runs
        self.on_progress: Callable[[Mapping[str, Any]], None] | None = None
        self.module = model.module.to(self.device)

    # -- identity -----------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.dataset.class_names)

    @property
    def ignore_index(self) -> int:
        return self.dataset.ignore_index

    def key_parts(self, evaluation: str, **params: Any) -> dict[str, Any]:
        """Everything a cached evaluation depends on."""
        return {
            "evaluation": evaluation,
            "params": params,
            "model": self.model.sha256,
            "data": self.dataset.fingerprint(),
            "num_samples": self.num_samples,
            "seed": self.seed,
            "torch": torch.__version__,
        }

    def is_cached(self, parts: Mapping[str, Any]) -> bool:
        """Whether ``parts`` has been computed (successfully or not) already."""
        return cache_key(parts) in self._cache

    def cached(self, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """Compute once per key; a failure is cached too, so every claim reports it at once.

        A timeout is not: it says how long one claim was willing to wait, not what the
        evaluation gives, so a later claim with a larger budget (or none) computes it again.
        """
        key = cache_key(parts)
        if key in self._cache:
            hit = self._cache[key]
            if isinstance(hit, BaseException):
                raise hit
            return hit
        budget = self.budget
        if budget is not None:
            budget.enter(str(parts.get("evaluation")), parts.get("params", {}))
        done = False
        try:
            value = compute()
            done = True
        except ClaimTimeout:
            self.timed_out.add(key)
            raise
        except Exception as exc:
            self._cache[key] = exc
            raise
        finally:
            if budget is not None:
                budget.leave(done=done)
        self._cache[key] = value
        self.timed_out.discard(key)
        return value

    # -- budgets and bounds -------------------------------------------------------------
    @contextlib.contextmanager
    def deadline(self, seconds: float | None, source: str = "") -> Iterator[None]:
        """Hold the work inside the block to ``seconds`` of wall-clock time (``None``: no
        limit); past it, the next check raises :class:`ClaimTimeout`."""
        previous, start = self.budget, self.forward_passes
        self.budget = None
        if seconds is not None:
            self.budget = Budget(seconds, source, passes=lambda: self.forward_passes - start)
        try:
            yield
        finally:
            self.budget = previous

    def check_deadline(self) -> None:
        """Raise :class:`ClaimTimeout` if the running claim's budget is spent."""
        if self.budget is not None:
            self.budget.check()

    def attack_step(self, done: int, total: int) -> None:
        """Called by iterative attacks after each step: progress, then the deadline."""
        if self.budget is not None:
            self.budget.at_step(done, total)
            self.budget.check()

    def check_radius(self, threat: ThreatModel, shape: Sequence[int] | None = None) -> None:
        """Refuse an L2 radius beyond the diameter of images of ``shape`` (C x H x W; by
        default the first sample's, read without a forward pass)."""
        if threat.norm != "l2":
            return
        if shape is None:
            if self._first_shape is None:
                if self.num_samples == 0:
                    return
                self._first_shape = tuple(self.dataset[0].image.shape)
            shape = self._first_shape
        channels, height, width = (int(v) for v in shape[-3:])
        problem = radius_beyond_image(threat, (height, width), channels)
        if problem is not None:
            raise ThreatOutOfRange(problem)

    # -- data and model -----------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        """Batches of consecutive samples of equal size (a size change starts a new batch)."""
        pending: list[tuple[int, Any]] = []
        for index in range(self.num_samples):
            if not pending and self.on_progress is not None:
                self.on_progress({"samples_done": index, "samples_total": self.num_samples})
            sample = self.dataset[index]
            if pending and pending[0][1].image.shape != sample.image.shape:
                yield self._budgeted(pending)
                pending = []
            pending.append((index, sample))
            if len(pending) == self.batch_size:
                yield self._budgeted(pending)
                pending = []
        if pending:
            yield self._budgeted(pending)

    def _budgeted(self, items: list[tuple[int, Any]]) -> Batch:
        """The batch, once the budget allows starting it (the images before it are done)."""
        if self.budget is not None:
            self.budget.at_batch(items[0][0], self.num_samples)
            self.budget.check()
        return self._collate(items)

    def _collate(self, items: list[tuple[int, Any]]) -> Batch:
        # Each sample goes to the device first and is stacked there: stacking large images on
        # the host is a memory copy that costs as much as a forward pass of a small network.
        images = torch.stack([s.image.to(self.device, torch.float32) for _, s in items])
        masks = torch.stack([s.mask.to(self.device, torch.int64) for _, s in items])
        return Batch(images, masks, tuple(s.name for _, s in items), tuple(i for i, _ in items))

    def forward(
        self, images: torch.Tensor, names: tuple[str, ...] = (), *, check_finite: bool = True
    ) -> torch.Tensor:
        """Logits ``N x K x H x W`` in float32, checked for class count and finiteness.

        ``check_finite=False`` leaves the finiteness check to the caller: it reads a value
        back from the device, and a caller in a hot loop batches that read with others.
        """
        from audit.model import check_finite as check_finite_logits
        from audit.model import check_num_classes

        self.forward_passes += 1
        logits = self.module(images)
        if not self._classes_checked:
            check_num_classes(
                logits,
                self.num_classes,
                model_name=self.model.path.name if self.model.path else "model",
                dataset_name=self.dataset.kind,
                class_names=self.class_names,
            )
            self._classes_checked = True
        logits = logits.float()
        if check_finite:
            check_finite_logits(
                logits, names or tuple(f"batch item {i}" for i in range(len(logits)))
            )
        return logits

    def attack_forward(
        self, on_backward: Callable[[torch.Tensor], None]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model as attacks see it: counted forward passes, counted backward passes.

        No class-count or finiteness check here: a non-finite logit inside an attack shows up
        as a non-finite gradient (a diagnostic), and the final adversarial forward pass goes
        through :meth:`forward`, which raises naming the sample.
        """

        def model(images: torch.Tensor) -> torch.Tensor:
            # Libraries loop inside their own code: every forward pass is a chance to stop.
            if self.budget is not None:
                self.budget.check()
            self.forward_passes += 1
            logits = self.module(images).float()
            if logits.requires_grad:
                logits.register_hook(on_backward)
            return logits

        return model

    # -- evaluations --------------------------------------------------------------------
    def clean(self) -> CleanEvaluation:
        """Clean predictions over the dataset slice, computed once."""
        return self.cached(self.key_parts("clean"), self._compute_clean)

    def _compute_clean(self) -> CleanEvaluation:
        per_image: list[torch.Tensor] = []
        names: list[str] = []
        sizes: list[tuple[int, int]] = []
        examples: list[Example] = []
        with torch.inference_mode():
            for batch in self.batches():
                pred = self.forward(batch.images, batch.names).argmax(1)
                cms = metrics.per_image_confusion(
                    pred, batch.masks, self.num_classes, self.ignore_index
                ).cpu()
                per_image.append(cms)
                names.extend(batch.names)
                sizes.extend([tuple(batch.images.shape[-2:])] * len(batch.names))
                for j in range(len(batch.names)):
                    if len(examples) >= self.max_examples:
                        break
                    examples.append(_example(batch, j, pred[j], cms[j]))
        if not per_image:
            raise EvaluationError(f"dataset {self.dataset.kind!r} has no samples to evaluate")
        return CleanEvaluation(torch.cat(per_image), tuple(names), tuple(sizes), tuple(examples))

    def attack(
        self,
        name: str,
        params: Mapping[str, Any],
        threat: ThreatModel,
        *,
        sweep: Sequence[ThreatModel] = (),
    ) -> AttackEvaluation:
        """``name`` at ``threat`` over the dataset slice, computed once per key.

        Attacks that share a sweep's work (the single-step family: one gradient serves every
        epsilon) compute all of ``sweep`` that is not cached yet in the same pass.
        """
        from audit.adversarial import run_attack
        from audit.attacks import build_attack

        attack = build_attack(name, params)
        # The attack's own parameters, defaults filled in: claims that spell the same attack
        # differently (steps given or defaulted) share one computation.
        canonical = {k: attack.params[k] for k in sorted(attack.params)}

        def parts(t: ThreatModel) -> dict[str, Any]:
            return self.key_parts(
                "attack", attack=name, params=canonical, norm=t.norm, eps=t.eps.value
            )

        if not self.is_cached(parts(threat)) and attack.shares_grid:
            todo = [threat] + [
                t
                for t in sweep
                if t != threat and t.norm == threat.norm and not self.is_cached(parts(t))
            ]
            if len(todo) > 1:
                try:
                    results = run_attack(self, attack, name, todo)
                except ThreatOutOfRange:
                    # Another epsilon of the sweep is too large: this one runs alone below
                    # (and is refused on its own if it is too large itself).
                    pass
                except ClaimTimeout:
                    self.timed_out.add(cache_key(parts(threat)))
                    raise
                except Exception as exc:
                    self._cache[cache_key(parts(threat))] = exc
                    raise
                else:
                    for t, result in zip(todo, results, strict=True):
                        self._store_attack(parts(t), result)
        result = self.cached(parts(threat), lambda: run_attack(self, attack, name, [threat])[0])
        self.attack_evaluations.setdefault(cache_key(parts(threat)), result)
        return result

    def _store_attack(self, parts: Mapping[str, Any], result: AttackEvaluation) -> None:
        key = cache_key(parts)
        self._cache[key] = result
        self.attack_evaluations[key] = result

    def noise(self, threat: ThreatModel) -> AttackEvaluation:
        """Random noise of the same norm and size: the baseline an attack must beat."""
        return self.attack("noise", {}, threat)

    def min_norm(
        self,
        name: str,
        params: Mapping[str, Any],
        norm: str,
        *,
        radius_steps: int = 32,
        adv_threshold: float = 0.99,
    ) -> MinNormEvaluation:
        """A minimal-norm attack's per-image and per-pixel radii, computed once per key."""
        from audit.adversarial import run_min_norm
        from audit.attacks import build_min_norm_attack

        attack = build_min_norm_attack(name, params)
        canonical = {k: attack.params[k] for k in sorted(attack.params)}
        parts = self.key_parts(
            "min_norm",
            attack=name,
            params=canonical,
            norm=norm,
            radius_steps=radius_steps,
            adv_threshold=adv_threshold,
        )
        result = self.cached(
            parts, lambda: run_min_norm(self, attack, name, norm, radius_steps, adv_threshold)
        )
        self.min_norm_evaluations.setdefault(cache_key(parts), result)
        return result

    def score(
        self, per_image: torch.Tensor, metric: str, *, claim: ClaimSpec | None = None
    ) -> tuple[float, metrics.Interval | None]:
        """A dataset-level metric and its bootstrap interval from per-image confusion matrices."""
        try:
            fn = metrics.metric_function(metric, self.class_names)
        except KeyError as exc:
            where = f"{claim.source}, claim {claim.id!r}, key 'metric': " if claim else ""
            raise ConfigError(f"{where}{exc.args[0]}") from None
        return self.score_state(per_image, fn)

    def score_state(
        self, per_image: torch.Tensor, fn: metrics.MetricFn
    ) -> tuple[float, metrics.Interval | None]:
        """``fn`` of the summed per-image state, and its bootstrap interval over images."""
        value = float(fn(per_image.sum(0)))
        interval = metrics.bootstrap_interval(
            per_image,
            fn,
            n_resamples=self.bootstrap_resamples,
            confidence=self.confidence,
            seed=self.seed,
        )
        return value, interval


def _example(batch: Batch, j: int, pred: torch.Tensor, cm: torch.Tensor) -> Example:
    image = (batch.images[j].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    total = int(cm.sum())
    accuracy = float(cm.diagonal().sum()) / total if total else float("nan")
    return Example(
        name=batch.names[j],
        image=image,
        mask=batch.masks[j].cpu().numpy(),
        prediction=pred.cpu().numpy(),
        pixel_accuracy=accuracy,
    )

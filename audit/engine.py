"""The engine: device, batches, forward passes, budgets, and the cache and log of evaluations.

Evaluations (:mod:`audit.evaluations`) run the model through the engine, which computes each
one once per key (everything the result depends on), hands the same result to every claim
that asks, and logs which claims used it, so the record reports it once per claim.  The
engine knows nothing of claims, records or pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from audit import metrics
from audit.budget import Budget
from audit.config import DEFAULT_SIZE_BUCKETS
from audit.errors import ClaimTimeout, ConfigError, ThreatOutOfRange
from audit.model import check_finite as check_finite_logits
from audit.model import check_num_classes
from audit.objects import Objects, check_size_buckets, find_objects
from audit.store import EvaluationStore
from audit.threat import ThreatModel, radius_beyond_image

if TYPE_CHECKING:
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


def worker_device(device: torch.device, worker: str | None) -> torch.device:
    """The device of a pytest-xdist worker (``worker`` is its id, ``gw3``): a CUDA device
    given without an index goes to GPU ``N mod count`` for worker ``gwN``, so ``-n`` workers
    spread over the visible GPUs instead of all sharing the first; anything else is kept."""
    if device.type != "cuda" or device.index is not None or not worker:
        return device
    digits = worker.removeprefix("gw")
    count = torch.cuda.device_count()
    if not digits.isdigit() or count < 2:
        return device
    return torch.device("cuda", int(digits) % count)


#: memory the ground-truth objects of :meth:`Engine.objects` may hold (their label maps)
OBJECTS_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # N x 3 x H x W on the engine's device, [0, 1]
    masks: torch.Tensor  # N x H x W int64 on the engine's device
    names: tuple[str, ...]
    indices: tuple[int, ...]


@dataclass
class LoggedEvaluation:
    """One computed evaluation and the claims that used it, in the order they asked."""

    kind: str
    key: str
    result: Any
    claims: list[str] = field(default_factory=list)
    #: taken from the store of an earlier run (``--audit-cache``), not computed in this one
    reused: bool = False


def seed_for(base_seed: int, *parts: Any) -> int:
    """A seed that depends only on the run's seed and what is computed, not on claim order."""
    digest = hashlib.sha256(repr((base_seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


#: words of an evaluation's label in progress lines
LABEL_WORDS = 5


def evaluation_label(parts: Mapping[str, Any]) -> str:
    """An evaluation in a few words, for progress: ``attack pgd linf eps=4/255``,
    ``corruption fog severity=3``; nested parameters (an attack's own) are left out."""
    params = parts.get("params") or {}
    words = [str(parts.get("evaluation", "evaluation"))]
    for name, value in params.items():
        if isinstance(value, Mapping | list | tuple) or value is None:
            continue
        if name in ("attack", "corruption", "norm", "certifier"):
            words.append(str(value))
        elif isinstance(value, float):
            # Linf epsilons are written in steps of 1/255 (pixel levels): say them so
            levels = round(value * 255, 2)
            linf = params.get("norm") == "linf" and levels and math.isclose(value * 255, levels)
            words.append(f"{name}={levels:g}/255" if linf else f"{name}={value:g}")
        else:
            words.append(f"{name}={value}")
    # the first few say which one it is; the rest would wrap the line
    return " ".join(words[:LABEL_WORDS])


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
        size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
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
        #: object size buckets (area fractions) of the per-object-size counts
        self.size_buckets = check_size_buckets(size_buckets)
        self.forward_passes = 0
        #: folder of Hypothesis' example database for searching claims (None: none); set by
        #: whoever builds the engine, from the ``hypothesis_db`` setting
        self.hypothesis_db: Path | None = None
        self._cache: dict[str, Any] = {}
        #: ground-truth objects per batch (:meth:`objects`), oldest first, within a byte budget
        self._objects: dict[tuple[int, ...], Objects] = {}
        #: evaluations asked for with ``log=True``, by cache key, in the order first computed
        self.log: dict[str, LoggedEvaluation] = {}
        #: node id of the claim being measured (:meth:`measuring`), for the log
        self.claim: str | None = None
        self._classes_checked = False
        #: the running claim's wall-clock budget (:meth:`deadline`), checked cooperatively
        self.budget: Budget | None = None
        #: cache keys of evaluations a budget stopped: never cached, computed afresh on demand
        self.timed_out: set[str] = set()
        self._first_shape: tuple[int, ...] | None = None
        #: called with {"evaluation", "samples_done", "samples_total"} before each batch and
        #: at the end, and with "steps_done" and "steps_total" too after each attack step, so
        #: the session can show progress and rewrite its partial record while it runs
        self.on_progress: Callable[[Mapping[str, Any]], None] | None = None
        #: labels of the evaluations being computed, innermost last (for progress)
        self._computing: list[str] = []
        self._progress: dict[str, Any] = {}
        #: results kept across runs (``--audit-cache``); set by whoever builds the engine
        self.disk_cache: EvaluationStore | None = None
        self._store_missed: set[str] = set()
        #: key parts of the evaluations taken from the store this run, by cache key
        self.reused: dict[str, Mapping[str, Any]] = {}
        #: key parts of the evaluations computed this run, by cache key, in order
        self.computed: dict[str, Mapping[str, Any]] = {}
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
            "size_buckets": list(self.size_buckets),
            "torch": torch.__version__,
        }

    def generator(self, *parts: Any) -> torch.Generator:
        """A generator on the engine's device seeded from the run's seed and ``parts`` (what
        is computed, and the batch): the same numbers whatever ran before."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed_for(self.seed, *parts))
        return generator

    def is_cached(self, parts: Mapping[str, Any]) -> bool:
        """Whether ``parts`` has been computed (successfully or not) already, here or in the
        store of an earlier run (then it is loaded)."""
        key = cache_key(parts)
        return key in self._cache or self._from_store(key, parts)

    def _from_store(self, key: str, parts: Mapping[str, Any]) -> bool:
        # a key is looked up once: a bad entry warns once, and a miss costs no second read
        if self.disk_cache is None or key in self._store_missed:
            return False
        found, value = self.disk_cache.load(parts)
        if found:
            self._cache[key] = value
            self.reused[key] = parts
        else:
            self._store_missed.add(key)
        return found

    def _to_store(self, key: str, parts: Mapping[str, Any], value: Any) -> None:
        self.computed[key] = parts
        if self.disk_cache is not None:
            self.disk_cache.save(parts, value)

    def cached(self, parts: Mapping[str, Any], compute: Callable[[], T], *, log: bool = False) -> T:
        """Compute once per key; a failure is cached too, so every claim reports it at once.

        A timeout is not: it says how long one claim was willing to wait, not what the
        evaluation gives, so a later claim with a larger budget (or none) computes it again.
        With ``log``, the result goes into :attr:`log`, with the claim that asked for it,
        on a cache hit as on a miss.
        """
        key = cache_key(parts)
        if key in self._cache or self._from_store(key, parts):
            hit = self._cache[key]
            if isinstance(hit, BaseException):
                raise hit
            if log:
                self._log(key, parts, hit)
            return hit
        budget = self.budget
        if budget is not None:
            budget.enter(str(parts.get("evaluation")), parts.get("params", {}))
        done = False
        self._computing.append(evaluation_label(parts))
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
            self._computing.pop()
            if budget is not None:
                budget.leave(done=done)
        self._cache[key] = value
        self.timed_out.discard(key)
        self._to_store(key, parts, value)
        if log:
            self._log(key, parts, value)
        return value

    def store(self, parts: Mapping[str, Any], value: Any, *, log: bool = False) -> None:
        """Cache (and log) a result computed alongside another (a sweep's shared pass)."""
        key = cache_key(parts)
        self._cache[key] = value
        if not isinstance(value, BaseException):
            self._to_store(key, parts, value)
        if log:
            self._log(key, parts, value)

    def _log(self, key: str, parts: Mapping[str, Any], value: Any) -> None:
        entry = self.log.setdefault(
            key,
            LoggedEvaluation(str(parts["evaluation"]), key, value, reused=key in self.reused),
        )
        if self.claim is not None and self.claim not in entry.claims:
            entry.claims.append(self.claim)

    def logged(self, kind: str) -> list[LoggedEvaluation]:
        """Logged evaluations of ``kind`` ("attack", "soundness", ...), oldest first."""
        return [entry for entry in self.log.values() if entry.kind == kind]

    @contextlib.contextmanager
    def measuring(self, claim: str) -> Iterator[None]:
        """Attribute the evaluations asked for inside the block to ``claim`` in the log."""
        previous, self.claim = self.claim, claim
        try:
            yield
        finally:
            self.claim = previous

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
        if self.on_progress is not None and self._progress:
            self._progress.update(steps_done=done, steps_total=total)
            self.on_progress(dict(self._progress))
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
    def objects(self, batch: Batch) -> Objects:
        """The connected ground-truth objects of ``batch``, each in its size bucket.

        The masks are the same for every evaluation, and finding components costs about a
        second per 1024x2048 image on a CPU, more than a corrupted forward pass: they are found
        once per batch and kept while they fit in :data:`OBJECTS_CACHE_BYTES`; past that the
        oldest batches are dropped and found again when asked for.
        """
        found = self._objects.get(batch.indices)
        if found is None:
            found = find_objects(batch.masks, self.ignore_index, self.size_buckets)
            self._objects[batch.indices] = found
            held = sum(o.labels.element_size() * o.labels.numel() for o in self._objects.values())
            while held > OBJECTS_CACHE_BYTES and len(self._objects) > 1:
                oldest = next(iter(self._objects))
                held -= (
                    self._objects[oldest].labels.element_size()
                    * self._objects[oldest].labels.numel()
                )
                del self._objects[oldest]
        return found

    def batches(self) -> Iterator[Batch]:
        """Batches of consecutive samples of equal size (a size change starts a new batch)."""
        pending: list[tuple[int, Any]] = []
        for index in range(self.num_samples):
            if not pending:
                self._report_progress(index)
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
        self._report_progress(self.num_samples)

    def _report_progress(self, done: int) -> None:
        if self.on_progress is None:
            return
        # Outside :meth:`cached` (an attack sweep's shared pass), the claim names the work.
        fallback = self.claim or "evaluation"
        self._progress = {
            "evaluation": self._computing[-1] if self._computing else fallback,
            "samples_done": done,
            "samples_total": self.num_samples,
        }
        self.on_progress(dict(self._progress))
        if done >= self.num_samples:
            self._progress = {}

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

    def score(self, per_image: torch.Tensor, metric: str) -> tuple[float, metrics.Interval | None]:
        """A dataset-level metric and its bootstrap interval from per-image confusion
        matrices; ``KeyError`` (with the known names) for a metric or class it lacks."""
        return self.score_state(per_image, metrics.metric_function(metric, self.class_names))

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

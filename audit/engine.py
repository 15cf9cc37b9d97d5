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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from audit import metrics
from audit.batches import Batch, load_batches, plan_batches
from audit.budget import Budget
from audit.config import DEFAULT_SIZE_BUCKETS
from audit.devices import device_memory_errors
from audit.distributed import Outcome, Ranks, merge_shards, split_batches
from audit.errors import ClaimTimeout, EvaluationError, ThreatOutOfRange
from audit.model import check_finite as check_finite_logits
from audit.model import check_num_classes
from audit.objects import Objects, ObjectsCache, check_size_buckets
from audit.progress import evaluation_label
from audit.store import EvaluationStore
from audit.threat import ThreatModel, radius_beyond_image

if TYPE_CHECKING:
    from audit.data.base import SegmentationDataset
    from audit.model import LoadedModel

T = TypeVar("T")


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
        precision: str = "float32",
        loader_workers: int = 0,
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
        #: the dtype of the attacks' iterations under autocast (:meth:`attack_autocast`)
        self.precision = precision
        #: processes loading the next batches while the device works (audit.batches)
        self.loader_workers = loader_workers
        #: folder of Hypothesis' example database for searching claims (None: none); set by
        #: whoever builds the engine, from the ``hypothesis_db`` setting
        self.hypothesis_db: Path | None = None
        self._cache: dict[str, Any] = {}
        #: ground-truth objects per batch (:meth:`objects`)
        self._objects = ObjectsCache(dataset.ignore_index, self.size_buckets)
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
        #: the torchrun job this engine is one rank of (:mod:`audit.distributed`); None: alone
        self.ranks: Ranks | None = None
        #: evaluations that ran out of device memory, by cache key: ``evaluation`` (a label)
        #: and ``batch_sizes`` (those tried, the last one what it ran with)
        self.memory_retries: dict[str, dict[str, Any]] = {}
        self._plans: dict[int, tuple[tuple[int, ...], ...]] = {}
        #: inside :meth:`sharded`: batches() yields this rank's shard only
        self._sharding = False
        #: the batch size in force (smaller than :attr:`batch_size` while retrying)
        self._batch_size = batch_size
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

    def attack_parts(self) -> dict[str, Any]:
        """What an attack's cache key adds to :meth:`key_parts`: its precision, when reduced."""
        return {} if self.precision == "float32" else {"precision": self.precision}

    @contextlib.contextmanager
    def attack_autocast(self) -> Iterator[None]:
        """An attack's iterations in the precision the user asked for (``--audit-precision``);
        certificates and soundness checks never enter this block."""
        if self.precision == "float32":
            yield
            return
        with torch.autocast(self.device.type, dtype=getattr(torch, self.precision)):
            yield

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
        if self.ranks is None:
            found, value = self.disk_cache.load(parts)
        else:
            # rank 0 reads and hands the entry on: a rank that read its own copy could
            # find what another missed, and their exchanges would no longer pair up
            found, value = False, None
            if self.ranks.rank == 0:
                found, value = self.disk_cache.load(parts)
            reply = self.ranks.rank0_bytes(Outcome("ok", value).to_bytes(key) if found else b"")
            if reply and self.ranks.rank != 0:
                found, value = True, Outcome.from_bytes(reply).value
        if found:
            self._cache[key] = value
            self.reused[key] = parts
        else:
            self._store_missed.add(key)
        return found

    def _to_store(self, key: str, parts: Mapping[str, Any], value: Any) -> None:
        self.computed[key] = parts
        if self.disk_cache is not None and (self.ranks is None or self.ranks.rank == 0):
            self.disk_cache.save(parts, value)

    def cached(
        self,
        parts: Mapping[str, Any],
        compute: Callable[[], T],
        *,
        log: bool = False,
        sharded: bool = False,
    ) -> T:
        """Compute once per key; a failure is cached too, so every claim reports it at once.

        A timeout is not: it says how long one claim was willing to wait, not what the
        evaluation gives, so a later claim with a larger budget (or none) computes it again.
        With ``log``, the result goes into :attr:`log`, with the claim that asked for it,
        on a cache hit as on a miss.  ``sharded`` marks an evaluation over the dataset's
        batches: see :meth:`sharded`.
        """
        key = cache_key(parts)
        if sharded:
            inner = compute
            label = evaluation_label(parts)

            def compute() -> T:
                return self.sharded(inner, key=key, label=label)

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
        # Only a sharded evaluation sees the shard: one it asks for (a Lipschitz search on
        # the first images) is the same computation on every rank.
        sharding, self._sharding = self._sharding, False
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
            self._sharding = sharding
            self._computing.pop()
            if budget is not None:
                budget.leave(done=done)
        self._cache[key] = value
        self.timed_out.discard(key)
        self._to_store(key, parts, value)
        if log:
            self._log(key, parts, value)
        return value

    def sharded(self, compute: Callable[[], T], *, key: str, label: str = "") -> T:
        """``compute`` (an evaluation over :meth:`batches`) with what one process cannot do
        alone: a retry with half the batch size when the device runs out of memory (down to
        one image; the sizes tried are logged), and under torchrun the shards of every rank
        merged into what a single process computes (:mod:`audit.distributed`).

        ``key`` names the evaluation in the ranks' exchange.
        """
        tried: list[int] = []
        configured = self._batch_size
        # progress names the work (a sweep's shared pass runs outside :meth:`cached`)
        self._computing.append(label or "evaluation")
        try:
            while True:
                tried.append(self._batch_size)
                try:
                    return self._over_shards(compute, key, label)
                except MemoryError as exc:
                    if self._batch_size == 1:
                        raise EvaluationError(
                            f"{label or 'evaluation'}: out of device memory even one image "
                            f"at a time (tried batch sizes {tried}): {exc}"
                        ) from exc
                    self._batch_size = max(1, self._batch_size // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
        finally:
            self._computing.pop()
            self._batch_size = configured
            if len(tried) > 1:
                self.memory_retries[key] = {"evaluation": label, "batch_sizes": tried}

    def _over_shards(self, compute: Callable[[], T], key: str, label: str) -> T:
        """One try of :meth:`sharded`: alone, ``compute()``; as a rank, ``compute()`` over
        this rank's shard, then every rank's outcome exchanged and merged."""
        sharding, self._sharding = self._sharding, True
        try:
            if self.ranks is None:
                return device_memory_errors(compute)
            outcome = self._shard_outcome(compute)
        finally:
            self._sharding = sharding
        replies = self.ranks.exchange(key, outcome)
        for rank, reply in enumerate(replies):
            if reply.status == "memory":
                raise MemoryError(f"rank {rank} ran out of device memory")
        for rank, reply in enumerate(replies):
            if reply.status == "error":
                if rank == self.ranks.rank and outcome.raised is not None:
                    raise outcome.raised
                shard = self.shard_images()[rank]
                start, stop = shard["start"], shard["stop"]
                where = f"images {start}-{stop - 1}" if stop > start else "no images"
                raise reply.exception(rank, where)
        parts = [r.value for r in replies if r.status == "ok"]
        if not parts:
            raise EvaluationError(f"dataset {self.dataset.kind!r} has no samples to evaluate")
        return merge_shards(parts, self)

    def _shard_outcome(self, compute: Callable[[], Any]) -> Outcome:
        """This rank's outcome: every exception becomes one, so that no rank leaves the
        others waiting in the exchange."""
        assert self.ranks is not None
        empty = not self.shards()[self.ranks.rank]
        try:
            value = device_memory_errors(compute)
        except MemoryError:
            return Outcome("memory")
        except Exception as exc:
            # a rank without images fails the "no samples" way: the others have them
            if empty and type(exc) is EvaluationError:
                return Outcome("empty")
            return Outcome.failed(exc)
        return Outcome("empty") if empty else Outcome("ok", value)

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
        """The connected ground-truth objects of ``batch``, each in its size bucket (found
        once per batch while they fit in :data:`audit.objects.CACHE_BYTES`)."""
        return self._objects.get(batch.indices, batch.masks)

    def batch_plan(self) -> tuple[tuple[int, ...], ...]:
        """The run's batches as sample indices (:func:`audit.batches.plan_batches`), at the
        batch size in force."""
        plan = self._plans.get(self._batch_size)
        if plan is None:
            plan = plan_batches(self.dataset, self.num_samples, self._batch_size)
            self._plans[self._batch_size] = plan
        return plan

    def shards(self) -> list[range]:
        """Each rank's contiguous run of batch numbers (one run of all batches when alone)."""
        plan = self.batch_plan()
        if self.ranks is None:
            return [range(len(plan))]
        return split_batches([len(b) for b in plan], self.ranks.world_size)

    def shard_images(self) -> list[dict[str, int]]:
        """Which images each rank covers, for the record: ``start`` and ``stop`` indices."""
        plan = self.batch_plan()
        out = []
        for rank, numbers in enumerate(self.shards()):
            indices = [i for n in numbers for i in plan[n]]
            start = indices[0] if indices else 0
            out.append({"rank": rank, "start": start, "stop": start + len(indices)})
        return out

    def batches(self) -> Iterator[Batch]:
        """The batches of :meth:`batch_plan`; inside :meth:`sharded`, this rank's only.
        Each starts once the claim's budget allows (the images before it are done)."""
        plan = self.batch_plan()
        numbers = range(len(plan))
        if self._sharding and self.ranks is not None:
            numbers = self.shards()[self.ranks.rank]
        done, total = 0, sum(len(plan[n]) for n in numbers)
        loaded = load_batches(self.dataset, plan, numbers, self.device, workers=self.loader_workers)
        try:
            for number in numbers:
                self._report_progress(done, total)
                if self.budget is not None:
                    self.budget.at_batch(done, total)
                    self.budget.check()
                yield next(loaded)
                done += len(plan[number])
        finally:
            loaded.close()
        self._report_progress(total, total)

    def _report_progress(self, done: int, total: int) -> None:
        if self.on_progress is None:
            return
        # Outside :meth:`cached` (an attack sweep's shared pass), the claim names the work.
        fallback = self.claim or "evaluation"
        self._progress = {
            "evaluation": self._computing[-1] if self._computing else fallback,
            "samples_done": done,
            "samples_total": total,
        }
        self.on_progress(dict(self._progress))
        if done >= total:
            self._progress = {}

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

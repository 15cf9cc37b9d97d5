"""One audit run, independent of pytest: settings in, claims checked, report out.

The pytest plugin drives an :class:`AuditSession` item by item; :func:`run_audit` drives
it in a plain loop for scripts and notebooks.  Model and data load lazily, once, on the
first claim that needs them; a failure to load is remembered and reported by every claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from audit.budget import claim_budget
from audit.claims import ClaimFailed, ClaimSpec, Measurement, Verdict, get_kind, judge
from audit.claims.base import judge_regression
from audit.config import Settings
from audit.data import open_dataset
from audit.data.spec import data_root
from audit.devices import rank_device, resolve_device, worker_device
from audit.distributed import Ranks, join_torchrun
from audit.engine import Engine
from audit.environment import environment, libraries_loaded, library_versions
from audit.errors import ClaimTimeout, ConfigError, ModelError, RankError, SegAuditError
from audit.interrupts import InterruptSignals, Terminated, describe_interruption, signal_name
from audit.metrics import finite_or_none
from audit.model import ModelMetadata, load_model
from audit.progress import ProgressDisplay
from audit.record.baseline import (
    REGRESSED,
    Baseline,
    baseline_header,
    compare_claim,
    compare_records,
    input_changes,
    load_baseline,
)
from audit.record.ctrf import write_ctrf
from audit.record.entries import summarise
from audit.record.evidence import save_evidence
from audit.record.manifest import copy_suites, suite_copy_name, write_manifest
from audit.record.merge import WORKER_PROVENANCE
from audit.record.writer import RunRecorder, now_iso
from audit.report import render_report
from audit.resources import demo_model_file
from audit.store import EvaluationStore
from audit.suite import Suite, load_suite, override_thresholds

#: how often a long evaluation rewrites the partial record (seconds)
PROGRESS_WRITE_INTERVAL_S = 5.0


def pickle_trust(settings: Settings) -> dict[str, Any]:
    """Whether a fully pickled model may run code, and which setting said so (provenance)."""
    source = settings.sources.get("trust_pickle")
    if source is None:
        source = "Settings (Python API)" if settings.trust_pickle else "default"
    return {"enabled": settings.trust_pickle, "source": source}


def preflight(settings: Settings) -> None:
    """Raise the problems that can be seen before any work: a missing model file or data
    folder, a device that is not there.  A run that would fail on its first claim fails at
    startup instead, as a usage error, not as N claims that could not run."""
    if not settings.uses_demo_model:
        path = Path(settings.model)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ModelError(f"model file {path} {what}")
    root = data_root(settings.data, base_dir=settings.base_for("data"))
    if root is not None and not root.is_dir():
        raise ConfigError(f"data folder {root} does not exist (from {settings.data!r})", key="data")
    resolve_device(settings.device)


class AuditSession:
    """Settings, suites, a lazily built engine, and the run's record."""

    def __init__(
        self,
        settings: Settings,
        *,
        command_line: Sequence[str] = (),
        writes_record: bool = True,
        baseline: Baseline | None = None,
        progress: ProgressDisplay | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.settings = settings
        #: the torchrun job this run is one rank of (None: a single process); every rank
        #: runs every claim over its shard, and rank 0 alone writes to the report folder
        self.ranks = ranks
        #: where long evaluations show how far they got (standard error by default)
        self.progress = progress or ProgressDisplay(settings.progress)
        #: False in processes whose results another process records (pytest-xdist workers)
        self.writes_record = writes_record
        self.suites: list[Suite] = []
        self.recorder = RunRecorder(
            provenance={
                "seed": settings.seed,
                "device_requested": settings.device,
                "batch_size": settings.batch_size,
                "limit": settings.limit,
                # the attacks' iterations only: certificates always run in full precision
                "attack_precision": settings.precision,
                "trust_pickle": pickle_trust(settings),
                "command_line": list(command_line) or list(sys.argv),
                "versions": library_versions(),
                "environment": environment(),
                "hostname": socket.gethostname(),
            }
        )
        self._engine: Engine | None = None
        self._engine_error: SegAuditError | None = None
        self._last_progress_write = 0.0
        #: SIGTERM and SIGINT as interrupts; installed by whoever drives the run (plugin,
        #: run_audit)
        self.interrupts = InterruptSignals()
        #: the run this one is compared with (``settings.baseline``; the plugin loads it
        #: at startup, where a bad file is a usage error)
        self.baseline = baseline
        if baseline is None and settings.baseline is not None:
            self.baseline = load_baseline(settings.baseline)
        if self.baseline is not None:
            self.recorder.baseline = baseline_header(self.baseline)

    # -- the record while the run goes on -----------------------------------------------
    def checkpoint(self) -> None:
        """Write the partial record now, so a run killed from here on still leaves it."""
        if self.writes_record:
            self.recorder.write(self.settings.report_dir, complete=False)

    def _on_progress(self, progress: Mapping[str, Any]) -> None:
        """Engine callback during long evaluations: shows it, and rewrites the partial
        record at most every few seconds."""
        self.progress.update(progress)
        self.recorder.progress["evaluation"] = dict(progress)
        now = time.monotonic()
        if now - self._last_progress_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_progress_write = now
            self.checkpoint()

    # -- suites -------------------------------------------------------------------------
    def load_suite(self, ref: str) -> Suite:
        suite = load_suite(ref, base_dir=self.settings.base_for("suites"))
        source = self.settings.sources.get("thresholds")
        suite = override_thresholds(
            suite,
            self.settings.thresholds,
            source="--audit-threshold" if source == "command line" else source,
        )
        if self.settings.require_proof:
            suite = replace(
                suite, claims=tuple(replace(c, require_proof=True) for c in suite.claims)
            )
        if any(s.name == suite.name and s.path != suite.path for s in self.suites):
            raise SegAuditError(
                f"two suites are named {suite.name!r} ({suite.path} and another): node ids "
                "would clash; rename one"
            )
        self.suites.append(suite)
        self.recorder.add_suite({**suite.to_dict(), "copy": suite_copy_name(suite.name)})
        return suite

    # -- engine -------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The engine, built on first use; a build failure is raised again on every use."""
        if self._engine_error is not None:
            raise self._engine_error
        if self._engine is None:
            engine, problem = None, None
            try:
                engine = self._build_engine()
            except Exception as exc:
                problem = exc
            if self.ranks is not None:
                # every rank hears of a failure, or the others would wait for its shards
                try:
                    said = None if problem is None else f"{type(problem).__name__}: {problem}"
                    self.ranks.agree("to load the model and data", said)
                except RankError as exc:
                    problem = exc
            if problem is not None:
                if not isinstance(problem, SegAuditError):
                    raise problem
                self._engine_error = problem
                self.recorder.record_error("model and data", str(problem))
                raise problem
            self._engine = engine
        return self._engine

    @property
    def engine_ready(self) -> bool:
        return self._engine is not None

    def _build_engine(self) -> Engine:
        s = self.settings
        model_path = demo_model_file() if s.uses_demo_model else Path(s.model)
        # The user's metadata (suite [model] tables, then settings) goes in with the model,
        # so that it can stand in for keys of the file's audit.json SegAudit does not know.
        override = ModelMetadata()
        for suite in self.suites:
            if suite.model_metadata:
                override = override.merged(
                    ModelMetadata.from_mapping(suite.model_metadata, source=f"{suite.path} [model]")
                )
        if s.metadata:
            source = s.sources.get("metadata", "settings")
            override = override.merged(ModelMetadata.from_mapping(s.metadata, source=source))
        loaded = load_model(
            model_path, factory=s.factory, trust_pickle=s.trust_pickle, metadata=override
        )
        metadata = loaded.metadata
        # Folder data without classes.txt takes the class names the model declares.
        dataset = open_dataset(
            s.data, base_dir=s.base_for("data"), default_class_names=metadata.class_names
        )
        if metadata.num_classes is not None and metadata.num_classes != dataset.num_classes:
            raise ModelError(
                f"model {model_path.name!r} declares {metadata.num_classes} classes but dataset "
                f"{dataset.kind!r} has {dataset.num_classes} ({', '.join(dataset.class_names)})"
            )
        device = worker_device(resolve_device(s.device), os.environ.get("PYTEST_XDIST_WORKER"))
        if self.ranks is not None:
            device = rank_device(device, self.ranks.local_rank)
        engine = Engine(
            loaded,
            dataset,
            device=device,
            seed=s.seed,
            batch_size=s.batch_size,
            limit=s.limit,
            bootstrap_resamples=s.bootstrap_resamples,
            confidence=s.confidence,
            examples=s.examples,
            size_buckets=s.size_buckets,
            precision=s.precision,
            loader_workers=s.loader_workers,
        )
        engine.hypothesis_db = s.hypothesis_db
        if self.ranks is not None:
            engine.ranks = self.ranks
            self.recorder.provenance["distributed"] = {
                "world_size": self.ranks.world_size,
                "backend": self.ranks.backend,
                "shards": engine.shard_images(),
            }
        if s.cache_dir is not None:
            engine.disk_cache = EvaluationStore(
                s.cache_dir,
                # what a result depends on that the engine's key parts leave out
                {
                    "versions": library_versions(),
                    "device": str(device),
                    "batch_size": s.batch_size,
                    "examples": [engine.max_examples, engine.attack_examples],
                    "factory": s.factory,
                    "metadata": metadata.to_dict(),
                },
                on_problem=self._cache_problem,
            )
            self.recorder.cache = cache_record(engine)
        self.recorder.provenance.update(
            device=str(device),
            model={
                "path": str(model_path),
                "sha256": loaded.sha256,
                "format": loaded.format,
                "metadata": metadata.to_dict(),
                # keys of the file's audit.json replaced by the user's metadata, and ignored
                "embedded_keys_replaced": dict(loaded.ignored_embedded),
            },
            dataset={
                "spec": s.data,
                "kind": dataset.kind,
                "fingerprint": dataset.fingerprint(),
                "num_samples": engine.num_samples,
                "available_samples": len(dataset),
                "class_names": list(dataset.class_names),
                "ignore_index": dataset.ignore_index,
                "describe": dataset.describe(),
            },
        )
        engine.on_progress = self._on_progress
        self.checkpoint()
        return engine

    # -- claims -------------------------------------------------------------------------
    def prepare(self, spec: ClaimSpec) -> None:
        """Build the engine a claim needs; a failure is recorded as the claim's error.

        The plugin calls this in the item's setup, so that pytest reports "the audit could
        not run" as an error, apart from claims the model broke (failures).
        """
        try:
            self.engine  # noqa: B018 (built on first use)
        except SegAuditError as exc:
            self.recorder.record_claim(spec.nodeid, verdict="error", message=str(exc))
            self.checkpoint()
            raise

    def register(self, spec: ClaimSpec) -> None:
        self.recorder.register_claim(spec)

    def check(self, spec: ClaimSpec) -> dict[str, Any]:
        """Measure and judge one claim; record it; raise :class:`ClaimFailed` if it fails.

        Any other exception is recorded as the claim's error and propagates.
        """
        self.register(spec)
        self.interrupts.raise_if_received()
        self.recorder.progress = {"claim": spec.nodeid}
        self.checkpoint()
        start = time.perf_counter()
        try:
            engine = self.engine
            kind = get_kind(spec.kind)
            kind.check_classes(spec, engine.class_names)
            with engine.measuring(spec.nodeid), engine.deadline(*claim_budget(spec, self.settings)):
                measurement = kind.measure(spec, engine)
        except KeyboardInterrupt as exc:
            name = signal_name(exc)
            self._record_interrupted(spec, start, name)
            # A fresh exception from this frame: the signal may have landed at an instruction
            # without a line number (Python 3.11), whose traceback entry crashes pytest's
            # formatting of the interrupt (tb_lineno is None) and turns exit 2 into exit 1.
            raise Terminated(name) from None
        except Exception as exc:
            self.progress.close()
            if self.interrupts.received is not None:
                # a library turned the interrupt into an ordinary error: still an interrupt
                self._record_interrupted(spec, start, self.interrupts.received)
                raise Terminated(self.interrupts.received) from exc
            self.recorder.record_claim(
                spec.nodeid,
                verdict="error",
                message=f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, SegAuditError)
                else str(exc),
                duration_s=round(time.perf_counter() - start, 4),
                evidence={"partial": exc.progress} if isinstance(exc, ClaimTimeout) else {},
            )
            self.checkpoint()
            raise
        self.progress.close()
        verdict = judge(spec, measurement)
        evidence = dict(measurement.evidence)
        if measurement.artifacts:
            evidence["files"] = save_evidence(
                self.settings.report_dir, spec.nodeid, measurement.artifacts
            )
        entry = self.recorder.record_claim(
            spec.nodeid,
            verdict="passed" if verdict.passed else "failed",
            measured=finite_or_none(measurement.value),
            compared=finite_or_none(verdict.compared),
            interval=measurement.interval.to_dict() if measurement.interval else None,
            message=verdict.detail if verdict.passed else verdict.summary,
            num_samples=measurement.num_samples,
            condition=measurement.condition,
            quantity=measurement.quantity,
            evidence=evidence,
            unproven=measurement.unproven,
            duration_s=round(time.perf_counter() - start, 4),
        )
        verdict = self._against_baseline(spec, measurement, verdict, entry)
        self.checkpoint()
        if not verdict.passed:
            raise ClaimFailed(verdict, spec.statement)
        return entry

    def _against_baseline(
        self, spec: ClaimSpec, m: Measurement, verdict: Verdict, entry: dict[str, Any]
    ) -> Verdict:
        """Compare the judged claim with the baseline run's entry (stored as its
        ``baseline``); with ``fail_on_regression`` a regressed claim that holds fails."""
        if self.baseline is None:
            return verdict
        row = compare_claim(self.baseline.claims.get(spec.nodeid), entry)
        self.recorder.record_claim(spec.nodeid, baseline=row)
        if not (verdict.passed and self.settings.fail_on_regression and row["status"] == REGRESSED):
            return verdict
        current = {"provenance": self.recorder.provenance, "suites": self.recorder.suites}
        changed = [
            c["input"]
            for c in input_changes(self.baseline.record, current)
            if c["input"] in ("data", "samples")
        ]
        note = f"the baseline run measured other data ({', '.join(changed)})" if changed else ""
        verdict = judge_regression(spec, m, verdict, row, note=note)
        self.recorder.record_claim(spec.nodeid, verdict="failed", message=verdict.summary)
        return verdict

    def _cache_problem(self, message: str) -> None:
        # A warning, not an error: the entry is recomputed and the run is as good as ever.
        self.progress.output.line(f"SegAudit: warning: {message}")

    def _record_interrupted(self, spec: ClaimSpec, start: float, signal: str) -> None:
        # Stays "not_run": it was not measured; the message says why it stopped.
        elapsed = time.perf_counter() - start
        self.recorder.record_claim(
            spec.nodeid,
            message=f"interrupted by {signal} after {elapsed:.1f} s",
            duration_s=round(elapsed, 4),
        )

    # -- the end ------------------------------------------------------------------------
    def worker_summary(self) -> dict[str, Any] | None:
        """What a pytest-xdist worker hands the controller at its end: its evaluations
        summarised as a serial run's record holds them (example images go to the shared
        report folder), the model and data it loaded, and errors summarising them raised
        (:mod:`audit.record.merge`); ``None`` when it never built an engine."""
        if not self.engine_ready:
            return None
        summarise(
            self.recorder,
            self.engine,
            self.settings.report_dir,
            compute=not self.engine.timed_out,
            palette=self.settings.palette,
        )
        record_memory_retries(self.recorder.provenance, self.engine)
        # the controller loaded no suite: the worker keeps the suites as run for the manifest
        copy_suites(
            self.settings.report_dir, {s.name: s.text for s in self.suites if s.text is not None}
        )
        provenance = self.recorder.provenance
        return {
            "cache": cache_record(self.engine),
            "suites": self.recorder.suites,
            "evaluations": self.recorder.evaluations,
            "provenance": {
                k: provenance[k] for k in (*WORKER_PROVENANCE, "memory_retries") if k in provenance
            },
            "errors": self.recorder.errors,
        }

    def worker_summary_json(self) -> str:
        """:meth:`worker_summary` as JSON text; a failure becomes an error for the record,
        so the worker still ends cleanly."""
        try:
            summary = self.worker_summary() or {}
        except Exception as exc:
            where = "xdist worker"
            summary = {"errors": [{"where": where, "message": f"{type(exc).__name__}: {exc}"}]}
        return json.dumps(summary, default=str)

    def finish(self, *, complete: bool, interrupted_by: str | None = None) -> Path:
        """Write ``results.json`` (always) and render ``index.html`` from it.

        Summarising an evaluation for the report can fail (a model that crashed on the
        first batch, a full disk for example images); each failure becomes an error in the
        record and the rest of the record and the report are still written.
        """
        report_dir = self.settings.report_dir
        if interrupted_by is not None:
            self.recorder.interrupted_by = interrupted_by
        if self.engine_ready:
            # An interrupted run reports what it has, but starts no new computation; nor
            # does one whose claims ran out of time (the report would redo that work with
            # no budget at all).
            compute = complete and not self.engine.timed_out
            # noise baselines and example images can take a while after the last claim
            self.progress.note("summarising the evaluations for the report")
            start = time.perf_counter()
            summarise(
                self.recorder,
                self.engine,
                report_dir,
                compute=compute,
                palette=self.settings.palette,
            )
            self.progress.note(f"summaries done in {time.perf_counter() - start:.1f} s")
            if self.engine.disk_cache is not None:
                self.recorder.cache = cache_record(self.engine)
            record_memory_retries(self.recorder.provenance, self.engine)
        self.recorder.progress.pop("evaluation", None)
        if self.baseline is not None:
            self.recorder.baseline = compare_records(
                self.baseline, self.recorder.to_dict(complete=complete)
            )
        self.recorder.finished = True
        self.recorder.provenance["finished_at"] = now_iso()
        self.recorder.provenance["libraries"] = libraries_loaded()
        try:
            copy_suites(report_dir, {s.name: s.text for s in self.suites if s.text is not None})
        except OSError as exc:
            self.recorder.record_error("suite copies", f"cannot copy the suites as run: {exc}")
        results = self.recorder.write(report_dir, complete=complete)
        try:
            write_manifest(report_dir, self.recorder.to_dict(complete=complete))
        except OSError as exc:
            # the record says why there is no manifest; the report says there is none
            self.recorder.record_error("manifest", f"cannot write the evidence manifest: {exc}")
            results = self.recorder.write(report_dir, complete=complete)
        if self.settings.ctrf is not None:
            # before the HTML, so that a rendering failure does not cost CI its report
            write_ctrf(self.settings.ctrf, self.recorder.to_dict(complete=complete))
        render_report(report_dir)
        return results


def cache_record(engine: Engine) -> dict[str, Any]:
    """The record's ``cache``: the folder, and which evaluations were reused and computed."""
    store = engine.disk_cache
    if store is None:
        return {}

    def rows(evaluations: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "evaluation": str(parts.get("evaluation")),
                "key": store.key(parts),
                "params": json.loads(json.dumps(parts.get("params", {}), default=str)),
            }
            for parts in evaluations.values()
        ]

    return {
        "dir": str(store.folder),
        "reused": rows(engine.reused),
        "computed": rows(engine.computed),
        "warnings": list(store.problems),
    }


def record_memory_retries(provenance: dict[str, Any], engine: Engine) -> None:
    """``provenance.memory_retries``: each evaluation that ran out of device memory, and
    the batch sizes it tried, the last being what it ran with (absent when none did)."""
    if engine.memory_retries:
        provenance["memory_retries"] = [dict(row) for row in engine.memory_retries.values()]


def run_audit(settings: Settings, *, claims: Iterable[str] | None = None) -> dict[str, Any]:
    """Check every claim of the settings' suites without pytest; return the results record.

    ``claims`` optionally restricts the run to these node ids.  The report is written to
    ``settings.report_dir`` whatever the verdicts (by rank 0 alone, under torchrun).
    """
    ranks, settings = join_torchrun(settings)
    session = AuditSession(settings, ranks=ranks)
    selected = set(claims) if claims is not None else None
    specs = []
    for ref in settings.suites:
        for spec in session.load_suite(ref).claims:
            if selected is None or spec.nodeid in selected:
                session.register(spec)
                specs.append(spec)
    complete = False
    interrupted_by = None
    session.checkpoint()
    with session.interrupts:
        try:
            for spec in specs:
                # recorded by check(); the next claim still runs
                with contextlib.suppress(ClaimFailed, SegAuditError):
                    session.check(spec)
            complete = True
        except KeyboardInterrupt as exc:
            interrupted_by = describe_interruption(exc)
            raise
        finally:
            session.finish(complete=complete, interrupted_by=interrupted_by)
            if ranks is not None:
                ranks.leave(wait=session.interrupts.received is None)
    return session.recorder.to_dict(complete=complete)

"""One audit run, independent of pytest: settings in, claims checked, report out.

The pytest plugin drives an :class:`AuditSession` item by item; :func:`run_audit` drives
it in a plain loop for scripts and notebooks.  Model and data load lazily, once, on the
first claim that needs them; a failure to load is remembered and reported by every claim.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.claims import ClaimSpec, Verdict, get_kind, judge
from audit.config import Settings
from audit.errors import ModelError, SegAuditError
from audit.results import RunRecorder, finite_or_none, now_iso
from audit.suite import Suite, load_suite

if TYPE_CHECKING:
    from audit.engine import Engine

_VERSIONED = ("torch", "torchvision", "numpy", "pytest", "foolbox", "torchattacks", "jinja2")


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a result depends on (``None`` when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("pytest-segaudit", *_VERSIONED):
        try:
            out["segaudit" if dist == "pytest-segaudit" else dist] = version(dist)
        except PackageNotFoundError:
            out["segaudit" if dist == "pytest-segaudit" else dist] = None
    return out


class ClaimFailed(AssertionError):
    """A claim was measured and does not hold."""

    def __init__(self, verdict: Verdict, statement: str) -> None:
        super().__init__(f"{verdict.summary}\nclaimed: {statement}")
        self.verdict = verdict


class AuditSession:
    """Settings, suites, a lazily built engine, and the run's record."""

    def __init__(self, settings: Settings, *, command_line: Sequence[str] = ()) -> None:
        self.settings = settings
        self.suites: list[Suite] = []
        self.recorder = RunRecorder(
            provenance={
                "seed": settings.seed,
                "device_requested": settings.device,
                "batch_size": settings.batch_size,
                "limit": settings.limit,
                "command_line": list(command_line) or list(sys.argv),
                "versions": library_versions(),
                "hostname": socket.gethostname(),
            }
        )
        self._engine: Engine | None = None
        self._engine_error: SegAuditError | None = None

    # -- suites -------------------------------------------------------------------------
    def load_suite(self, ref: str) -> Suite:
        suite = load_suite(ref, base_dir=self.settings.base_for("suites"))
        if any(s.name == suite.name and s.path != suite.path for s in self.suites):
            raise SegAuditError(
                f"two suites are named {suite.name!r} ({suite.path} and another): node ids "
                "would clash; rename one"
            )
        self.suites.append(suite)
        self.recorder.add_suite(suite.to_dict())
        return suite

    # -- engine -------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The engine, built on first use; a build failure is raised again on every use."""
        if self._engine_error is not None:
            raise self._engine_error
        if self._engine is None:
            try:
                self._engine = self._build_engine()
            except SegAuditError as exc:
                self._engine_error = exc
                self.recorder.record_error("model and data", str(exc))
                raise
        return self._engine

    @property
    def engine_ready(self) -> bool:
        return self._engine is not None

    def _build_engine(self) -> Engine:
        from audit.data import open_dataset
        from audit.engine import Engine, resolve_device
        from audit.model import ModelMetadata, load_model
        from audit.resources import demo_model_file

        s = self.settings
        model_path = demo_model_file() if s.uses_demo_model else Path(s.model)
        loaded = load_model(model_path, factory=s.factory, trust_pickle=s.trust_pickle)
        metadata = loaded.metadata
        for suite in self.suites:
            if suite.model_metadata:
                override = ModelMetadata.from_mapping(
                    suite.model_metadata, source=f"{suite.path} [model]"
                )
                metadata = metadata.merged(override)
        if s.metadata:
            source = s.sources.get("metadata", "settings")
            metadata = metadata.merged(ModelMetadata.from_mapping(s.metadata, source=source))
        loaded = loaded.with_metadata(metadata)
        dataset = open_dataset(s.data, base_dir=s.base_for("data"))
        if metadata.num_classes is not None and metadata.num_classes != dataset.num_classes:
            raise ModelError(
                f"model {model_path.name!r} declares {metadata.num_classes} classes but dataset "
                f"{dataset.kind!r} has {dataset.num_classes} ({', '.join(dataset.class_names)})"
            )
        device = resolve_device(s.device)
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
        )
        self.recorder.provenance.update(
            device=str(device),
            model={
                "path": str(model_path),
                "sha256": loaded.sha256,
                "format": loaded.format,
                "metadata": metadata.to_dict(),
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
        return engine

    # -- claims -------------------------------------------------------------------------
    def register(self, spec: ClaimSpec) -> None:
        self.recorder.register_claim(spec)

    def check(self, spec: ClaimSpec) -> dict[str, Any]:
        """Measure and judge one claim; record it; raise :class:`ClaimFailed` if it fails.

        Any other exception is recorded as the claim's error and propagates.
        """
        self.register(spec)
        start = time.perf_counter()
        try:
            measurement = get_kind(spec.kind).measure(spec, self.engine)
        except Exception as exc:
            self.recorder.record_claim(
                spec.nodeid,
                verdict="error",
                message=f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, SegAuditError)
                else str(exc),
                duration_s=round(time.perf_counter() - start, 4),
            )
            raise
        verdict = judge(spec, measurement)
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
            evidence=dict(measurement.evidence),
            duration_s=round(time.perf_counter() - start, 4),
        )
        if not verdict.passed:
            raise ClaimFailed(verdict, spec.statement)
        return entry

    # -- the end ------------------------------------------------------------------------
    def finish(self, *, complete: bool) -> Path:
        """Write ``results.json`` (always) and render ``index.html`` from it."""
        from audit.report import render_report

        report_dir = self.settings.report_dir
        if self.engine_ready:
            # An interrupted run reports what it has, but starts no new computation.
            self._record_clean_evaluation(report_dir, compute=complete)
        self.recorder.finished = True
        self.recorder.provenance["finished_at"] = now_iso()
        results = self.recorder.write(report_dir, complete=complete)
        render_report(report_dir)
        return results

    def _record_clean_evaluation(self, report_dir: Path, *, compute: bool) -> None:
        """Add the clean evaluation (per-class table, examples) to the record for the report."""
        from audit import metrics
        from audit.examples import write_examples

        engine = self.engine
        if not compute and not engine.is_cached(engine.key_parts("clean")):
            return
        try:
            clean = engine.clean()
        except SegAuditError:
            return  # already recorded by the claims that needed it
        cm = clean.confusion
        ious = metrics.class_iou(cm)
        accs = metrics.class_accuracy(cm)
        headline = {}
        intervals = {}
        for name in metrics.HEADLINE_METRICS:
            value, interval = engine.score(clean.per_image, name)
            headline[name] = finite_or_none(value)
            intervals[name] = interval.to_dict() if interval else None
        palette = engine.dataset.palette
        examples = write_examples(
            report_dir,
            clean.examples,
            palette=palette,
            ignore_index=engine.ignore_index,
        )
        for entry in examples:
            entry["pixel_accuracy"] = finite_or_none(entry["pixel_accuracy"])
        self.recorder.evaluations["clean"] = {
            "num_samples": clean.num_samples,
            "num_pixels": clean.num_pixels,
            "resolution": list(clean.resolution) if clean.resolution else None,
            "metrics": headline,
            "intervals": intervals,
            "aggregation": "dataset-level: one confusion matrix summed over all images",
            "per_class": [
                {
                    "name": name,
                    "iou": finite_or_none(float(ious[k])),
                    "accuracy": finite_or_none(float(accs[k])),
                    "support": int(cm[k].sum()),
                    "color": list(palette[k]),
                }
                for k, name in enumerate(engine.class_names)
            ],
            "confusion_matrix": cm.tolist(),
            "examples": examples,
        }
        self.recorder.provenance.setdefault("dataset", {})["resolution"] = (
            list(clean.resolution) if clean.resolution else None
        )


def run_audit(settings: Settings, *, claims: Iterable[str] | None = None) -> dict[str, Any]:
    """Check every claim of the settings' suites without pytest; return the results record.

    ``claims`` optionally restricts the run to these node ids.  The report is written to
    ``settings.report_dir`` whatever the verdicts.
    """
    session = AuditSession(settings)
    selected = set(claims) if claims is not None else None
    specs = []
    for ref in settings.suites:
        for spec in session.load_suite(ref).claims:
            if selected is None or spec.nodeid in selected:
                session.register(spec)
                specs.append(spec)
    complete = False
    try:
        for spec in specs:
            # recorded by check(); the next claim still runs
            with contextlib.suppress(ClaimFailed, SegAuditError):
                session.check(spec)
        complete = True
    finally:
        session.finish(complete=complete)
    return session.recorder.to_dict(complete=complete)

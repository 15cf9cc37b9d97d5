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
from audit.suite import Suite, load_suite, override_thresholds

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
        suite = override_thresholds(suite, self.settings.thresholds)
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
        evidence = dict(measurement.evidence)
        if measurement.artifacts:
            evidence["files"] = self._save_artifacts(spec, measurement.artifacts)
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
            duration_s=round(time.perf_counter() - start, 4),
        )
        if not verdict.passed:
            raise ClaimFailed(verdict, spec.statement)
        return entry

    def _save_artifacts(self, spec: ClaimSpec, artifacts: Any) -> dict[str, str]:
        """Save a claim's arrays under ``<report>/evidence/<claim>/``; paths relative to the
        report folder, so the report links them and the folder moves as a whole."""
        import re

        import numpy as np

        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.nodeid).strip("-")
        folder = self.settings.report_dir / "evidence" / slug
        folder.mkdir(parents=True, exist_ok=True)
        saved = {}
        for name, array in artifacts.items():
            path = folder / f"{name}.npy"
            np.save(path, np.asarray(array))
            saved[name] = str(path.relative_to(self.settings.report_dir))
        return saved

    # -- the end ------------------------------------------------------------------------
    def finish(self, *, complete: bool) -> Path:
        """Write ``results.json`` (always) and render ``index.html`` from it."""
        from audit.report import render_report

        report_dir = self.settings.report_dir
        if self.engine_ready:
            # An interrupted run reports what it has, but starts no new computation.
            self._record_clean_evaluation(report_dir, compute=complete)
            self._record_attack_evaluations(report_dir, compute=complete)
            self._record_certifications(report_dir)
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

    def _record_attack_evaluations(self, report_dir: Path, *, compute: bool) -> None:
        """Summaries of every attack and minimal-norm evaluation, their worst examples, and
        the gradient-masking diagnostics computed from them."""
        from audit.diagnostics import attack_diagnostics

        engine = self.engine
        evaluations = list(engine.attack_evaluations.values())
        known = set(engine.attack_evaluations)
        if not any(e.family != "random" for e in evaluations) and not engine.min_norm_evaluations:
            return
        clean_miou = None
        if engine.is_cached(engine.key_parts("clean")) or compute:
            with contextlib.suppress(SegAuditError):
                clean_miou = engine.score(engine.clean().per_image, "miou")[0]
        entries = [
            self._attack_entry(e, report_dir, clean_miou, compute=compute) for e in evaluations
        ]
        # The noise baselines computed for those entries join the list (the report draws
        # them as the dashed reference curve).
        entries += [
            self._attack_entry(e, report_dir, clean_miou, compute=False)
            for key, e in list(engine.attack_evaluations.items())
            if key not in known
        ]
        self.recorder.evaluations["attacks"] = entries
        self.recorder.diagnostics = attack_diagnostics(entries)
        if engine.min_norm_evaluations:
            self.recorder.evaluations["min_norm"] = [
                _min_norm_entry(e) for e in engine.min_norm_evaluations.values()
            ]

    def _attack_entry(
        self, ev: Any, report_dir: Path, clean_miou: float | None, *, compute: bool
    ) -> dict[str, Any]:
        from audit.examples import write_adversarial_examples

        engine = self.engine
        scores = {
            name: finite_or_none(engine.score(ev.per_image, name)[0])
            for name in ("miou", "pixel_accuracy", "mean_class_accuracy")
        }
        noise = None
        noise_parts = engine.key_parts(
            "attack", attack="noise", params={}, norm=ev.threat.norm, eps=ev.threat.eps.value
        )
        if compute or engine.is_cached(noise_parts):
            with contextlib.suppress(SegAuditError):
                baseline = engine.noise(ev.threat)
                noise = {
                    "miou": finite_or_none(engine.score(baseline.per_image, "miou")[0]),
                    "success_rate": finite_or_none(baseline.success_rate),
                }
        ratio = None
        if clean_miou and scores["miou"] is not None:
            ratio = scores["miou"] / clean_miou
        return {
            "id": ev.id,
            "attack": ev.attack,
            "library": ev.library,
            "family": ev.family,
            "params": ev.params,
            **ev.threat.to_dict(),
            "resolution": list(ev.resolution) if ev.resolution else None,
            "num_samples": ev.num_samples,
            "metrics": scores,
            "clean_miou": finite_or_none(clean_miou),
            "iou_ratio": finite_or_none(ratio),
            "success_rate": finite_or_none(ev.success_rate),
            "noise": noise,
            "perturbation": {
                "linf_max": float(ev.linf.max()),
                "l2_mean": float(ev.l2.mean()),
                "l2_max": float(ev.l2.max()),
            },
            "gradients": ev.gradients.to_dict(),
            "forward_passes": ev.forward_passes,
            "backward_passes": ev.backward_passes,
            "shared_by": ev.shared_by,
            "seconds": round(ev.seconds, 4),
            "examples": write_adversarial_examples(
                report_dir,
                ev.id,
                ev.examples,
                palette=engine.dataset.palette,
                ignore_index=engine.ignore_index,
            ),
        }

    def _record_certifications(self, report_dir: Path) -> None:
        """Certification curves, radius heat maps and soundness checks, for the report."""
        engine = self.engine
        if not engine.certifications and not engine.soundness:
            return
        entries = [
            _certification_entry(c, report_dir, engine) for c in engine.certifications.values()
        ]
        self.recorder.evaluations["certificates"] = entries
        soundness = []
        for nodeid, result in engine.soundness.items():
            claim = self.recorder.claims.get(nodeid, {})
            files = (claim.get("evidence") or {}).get("files", {})
            counterexample = dict(result.counterexample) if result.counterexample else None
            if counterexample is not None:
                counterexample["files"] = {
                    k: v for k, v in files.items() if k in ("input", "perturbation")
                }
            falsified = None
            if result.falsified is not None:
                falsified = {
                    "lower_bound": result.falsified.value,
                    "method": result.falsified.method,
                    "files": {k: v for k, v in files.items() if k.startswith("falsifying")},
                }
            soundness.append(
                {
                    "claim": nodeid,
                    "eps": result.eps,
                    "violations": result.violations,
                    "lipschitz": result.lipschitz.to_dict(),
                    "checks": [c.to_dict() for c in result.checks],
                    "counterexample": counterexample,
                    "falsified": falsified,
                    "num_samples": result.num_samples,
                    "seconds": round(result.seconds, 3),
                }
            )
        self.recorder.evaluations["soundness"] = soundness


def _certification_entry(cert: Any, report_dir: Path, engine: Any) -> dict[str, Any]:
    import hashlib

    from audit import metrics
    from audit.certification import KAPPA, LipschitzCertification, smoothing_miou

    if isinstance(cert, LipschitzCertification):
        digest = hashlib.sha256(repr((cert.lipschitz.value, cert.radii)).encode()).hexdigest()
        entry_id = f"lipschitz-{digest[:6]}"
        pa = cert.pixel_accuracy.sum(0)
        frac = cert.fraction.sum(0)
        return {
            "id": entry_id,
            "certifier": "lipschitz",
            "lipschitz": cert.lipschitz.to_dict(),
            "radii": list(cert.radii),
            "certified_pixel_accuracy": [
                finite_or_none(float(metrics.ratio_of_sums(row))) for row in pa
            ],
            "certified_fraction": [
                finite_or_none(float(metrics.ratio_of_sums(row))) for row in frac
            ],
            "clean_pixel_accuracy": finite_or_none(cert.clean_pixel_accuracy),
            "resolution": list(cert.resolution) if cert.resolution else None,
            "num_samples": cert.num_samples,
            "forward_passes": cert.forward_passes,
            "seconds": round(cert.seconds, 4),
            "kappa": KAPPA,
            "examples": _write_radius_maps(report_dir, entry_id, cert.examples),
        }
    digest = hashlib.sha256(repr(sorted(cert.config.items())).encode()).hexdigest()
    cm = cert.per_image.sum(0).numpy()
    return {
        "id": f"smoothing-{digest[:6]}",
        "certifier": "smoothing",
        "config": dict(cert.config),
        "radius": cert.radius,
        "certified_pixel_accuracy": finite_or_none(float(metrics.pixel_accuracy(cm))),
        "certified_miou": finite_or_none(float(smoothing_miou(cm))),
        "abstain_rate": finite_or_none(float(cert.abstained.sum() / cert.pixels.sum())),
        "num_samples": cert.num_samples,
        "forward_passes": cert.forward_passes,
        "seconds": round(cert.seconds, 4),
    }


#: viridis at five stops, for radius heat maps (the report draws the same colour bar)
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _write_radius_maps(report_dir: Path, entry_id: str, examples: Any) -> list[dict[str, Any]]:
    import numpy as np
    from PIL import Image

    folder = report_dir / "certificates" / entry_id
    folder.mkdir(parents=True, exist_ok=True)
    stops = np.asarray(_VIRIDIS, dtype=np.float64)
    out = []
    for i, ex in enumerate(examples):
        radius = np.nan_to_num(ex.radius.astype(np.float64), nan=0.0, posinf=0.0)
        top = float(np.quantile(radius, 0.99)) or 1e-12
        scaled = np.clip(radius / top, 0, 1) * (len(stops) - 1)
        low = np.floor(scaled).astype(int).clip(0, len(stops) - 2)
        frac = (scaled - low)[..., None]
        rgb = (stops[low] * (1 - frac) + stops[low + 1] * frac).round().astype(np.uint8)
        Image.fromarray(ex.image).save(folder / f"{i}-image.png", optimize=True)
        Image.fromarray(rgb).save(folder / f"{i}-radius.png", optimize=True)
        out.append(
            {
                "name": ex.name,
                "image": f"certificates/{entry_id}/{i}-image.png",
                "radius_map": f"certificates/{entry_id}/{i}-radius.png",
                "radius_max_shown": top,
                "median_radius": float(np.median(radius)),
                "certified_share_at": {
                    str(r): float((radius > r).mean()) for r in (0.05, 0.1, 0.17)
                },
            }
        )
    return out


def _min_norm_entry(ev: Any) -> dict[str, Any]:
    import numpy as np

    def summary(values: Any) -> dict[str, Any]:
        array = values.numpy()
        finite = np.isfinite(array)
        quantiles = {
            str(q): finite_or_none(float(np.quantile(array, q, method="inverted_cdf")))
            if array.size
            else None
            for q in (0.1, 0.25, 0.5, 0.75, 0.9)
        }
        return {
            "median": quantiles["0.5"],
            "quantiles": quantiles,
            "finite_fraction": float(finite.mean()) if array.size else None,
            "count": int(array.size),
        }

    image = summary(ev.image_radius)
    image["values"] = [finite_or_none(float(v)) for v in ev.image_radius.tolist()]
    return {
        "id": ev.id,
        "attack": ev.attack,
        "params": ev.params,
        "norm": ev.norm,
        "num_samples": ev.num_samples,
        "image_radius": image,
        "pixel_radius": summary(ev.pixel_radius),
        "reached": int(ev.reached.sum()),
        "forward_passes": ev.forward_passes,
        "backward_passes": ev.backward_passes,
        "seconds": round(ev.seconds, 4),
    }


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

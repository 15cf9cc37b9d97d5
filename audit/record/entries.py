"""Evaluations as ``results.json`` entries and evidence files, once the run is over.

:func:`summarise` reads the engine's log of evaluations (every attack, certification and
soundness check, with the claims that used it) and adds their summaries to the record: the
clean evaluation's per-class table and examples, attack curves with noise baselines and
their diagnostics, minimal-norm radii, certification curves with radius heat maps, and
soundness checks.  The report reads only what this writes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from audit import metrics
from audit.engine import Engine
from audit.errors import SegAuditError
from audit.evaluations.attack import evaluate_noise, noise_key
from audit.evaluations.certified import KAPPA, LipschitzCertification, smoothing_miou
from audit.evaluations.clean import evaluate_clean
from audit.metrics import finite_or_none
from audit.record.breakdowns import by_condition, by_object_size
from audit.record.corruption_entries import summarise_corruptions
from audit.record.diagnostics import CHECKS, attack_diagnostics, diagnostic_coverage
from audit.record.images import (
    PNG_COMPRESS_LEVEL,
    class_palette,
    save_shared,
    write_adversarial_examples,
    write_examples,
)
from audit.record.writer import RunRecorder


def summarise(
    recorder: RunRecorder,
    engine: Engine,
    report_dir: Path,
    *,
    compute: bool,
    palette: str = "dataset",
) -> None:
    """Add every evaluation's summary to ``recorder``; with ``compute`` false, only what
    was computed already (an interrupted run starts no new work).  Masks are drawn in the
    class colours of setting ``palette`` (:func:`audit.record.images.class_palette`), which
    the record names under ``provenance.palette``: the report reads the colours from the
    record, so a re-render draws the same page.

    A summary that fails (a full disk for example images) becomes an error in the record;
    the others are still written.
    """
    recorder.provenance["palette"] = palette
    steps: tuple[tuple[str, Callable[[], None]], ...] = (
        ("model output", lambda: _model_output(recorder, engine)),
        ("clean evaluation", lambda: _clean(recorder, engine, report_dir, compute, palette)),
        (
            "attack evaluations",
            lambda: _attacks(recorder, engine, report_dir, compute, palette),
        ),
        ("certificates", lambda: _certificates(recorder, engine, report_dir)),
        ("corruptions", lambda: summarise_corruptions(recorder, engine, compute=compute)),
    )
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            recorder.record_error(
                f"report: {what}", f"could not be summarised: {type(exc).__name__}: {exc}"
            )


def _model_output(recorder: RunRecorder, engine: Engine) -> None:
    """The model's output resolution and the wrapper's resize factor, known only once
    the model has run (a refused resize is in the errors instead)."""
    resolution = engine.module.output_resolution
    if resolution is not None:
        recorder.provenance.setdefault("model", {}).update(resolution.to_dict())


def _clean(
    recorder: RunRecorder, engine: Engine, report_dir: Path, compute: bool, palette_name: str
) -> None:
    """Add the clean evaluation (per-class table, examples) to the record for the report."""
    if not compute and not engine.is_cached(engine.key_parts("clean")):
        return
    try:
        clean = evaluate_clean(engine)
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
    palette = class_palette(palette_name, engine.dataset.palette)
    examples = write_examples(
        report_dir,
        clean.examples,
        palette=palette,
        ignore_index=engine.ignore_index,
    )
    for entry in examples:
        entry["pixel_accuracy"] = finite_or_none(entry["pixel_accuracy"])
    recorder.evaluations["clean"] = {
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
    # Only what applies: a dataset without conditions, or an evaluation built without object
    # counts (by a plug-in or a test), leaves the key out.
    conditions = by_condition(clean.per_image, engine.dataset)
    if conditions is not None:
        recorder.evaluations["clean"]["by_condition"] = conditions
    sizes = by_object_size(clean.object_sizes, engine.size_buckets)
    if sizes is not None:
        recorder.evaluations["clean"]["by_object_size"] = sizes
    recorder.provenance.setdefault("dataset", {})["resolution"] = (
        list(clean.resolution) if clean.resolution else None
    )


def _attacks(
    recorder: RunRecorder, engine: Engine, report_dir: Path, compute: bool, palette_name: str
) -> None:
    """Summaries of every attack and minimal-norm evaluation, their worst examples, and
    the gradient-masking diagnostics computed from them."""
    logged = engine.logged("attack")
    evaluations = [entry.result for entry in logged]
    known = {entry.key for entry in logged}
    min_norms = [entry.result for entry in engine.logged("min_norm")]
    if not any(e.family != "random" for e in evaluations) and not min_norms:
        recorder.diagnostic_checks = dict(CHECKS)
        recorder.diagnostic_coverage = diagnostic_coverage([], [])
        return
    clean_miou = None
    if engine.is_cached(engine.key_parts("clean")) or compute:
        with contextlib.suppress(SegAuditError):
            clean_miou = engine.score(evaluate_clean(engine).per_image, "miou")[0]
    palette = class_palette(palette_name, engine.dataset.palette)
    # every epsilon an attack was run at gets its noise baseline, all in one pass per norm
    grid = list(dict.fromkeys(e.threat for e in evaluations if e.family != "random"))
    entries = [
        _attack_entry(engine, e, report_dir, clean_miou, palette, compute=compute, grid=grid)
        for e in evaluations
    ]
    # The noise baselines computed for those entries join the list (the report draws
    # them as the dashed reference curve).
    entries += [
        _attack_entry(engine, e, report_dir, clean_miou, palette, compute=False)
        for e in (entry.result for entry in engine.logged("attack") if entry.key not in known)
    ]
    recorder.evaluations["attacks"] = entries
    recorder.diagnostics = attack_diagnostics(entries)
    recorder.diagnostic_checks = dict(CHECKS)
    recorder.diagnostic_coverage = diagnostic_coverage(entries, recorder.diagnostics)
    if min_norms:
        recorder.evaluations["min_norm"] = [min_norm_entry(e) for e in min_norms]


def _attack_entry(
    engine: Engine,
    ev: Any,
    report_dir: Path,
    clean_miou: float | None,
    palette: Any,
    *,
    compute: bool,
    grid: Sequence[Any] = (),
) -> dict[str, Any]:
    scores = {
        name: finite_or_none(engine.score(ev.per_image, name)[0])
        for name in ("miou", "pixel_accuracy", "mean_class_accuracy")
    }
    noise = None
    # the baseline serves the diagnostics and curves of attacks, not of noise itself
    if ev.family != "random" and (compute or engine.is_cached(noise_key(engine, ev.threat))):
        with contextlib.suppress(SegAuditError):
            baseline = evaluate_noise(engine, ev.threat, sweep=grid)
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
        "per_class": per_class_iou(ev.per_image, engine.class_names),
        "by_object_size": by_object_size(ev.object_sizes, engine.size_buckets),
        "image_miou": image_miou_quantiles(ev.per_image),
        **ensemble_winners(ev),
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
            palette=palette,
            ignore_index=engine.ignore_index,
        ),
    }


#: the quantiles of the per-image mIoU an attack entry records
IMAGE_MIOU_QUANTILES: tuple[tuple[str, float], ...] = (
    ("p10", 0.10),
    ("p25", 0.25),
    ("p50", 0.50),
    ("p75", 0.75),
    ("p90", 0.90),
)


def image_miou_quantiles(per_image: Any) -> dict[str, float | None]:
    """Quantiles, minimum and mean of the images' own mIoU (images without labelled pixels
    left out): where the dataset-level mIoU hides a few images that an attack wipes out."""
    values = np.asarray(metrics.miou(per_image), dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {name: None for name in ("min", *dict(IMAGE_MIOU_QUANTILES), "mean")}
    out: dict[str, float | None] = {"min": float(values.min())}
    for name, q in IMAGE_MIOU_QUANTILES:
        out[name] = float(np.quantile(values, q))
    out["mean"] = float(values.mean())
    return out


def ensemble_winners(ev: Any) -> dict[str, Any]:
    """For an ensemble: ``members`` (member -> images it won, every member listed) and
    ``winners`` (image name -> member); nothing for a single attack."""
    if not ev.winners:
        return {}
    names = str(ev.params.get("members", "")).split(",")
    counts = dict.fromkeys([n for n in names if n], 0)
    for _, member in ev.winners:
        counts[member] = counts.get(member, 0) + 1
    return {"members": counts, "winners": dict(ev.winners)}


def per_class_iou(per_image: Any, class_names: Sequence[str]) -> dict[str, float | None]:
    """Class name -> dataset-level IoU from per-image confusion matrices (the matrix the
    aggregate mIoU is computed from), ``None`` for a class in neither truth nor prediction."""
    ious = metrics.class_iou(per_image.sum(0))
    return {name: finite_or_none(float(ious[k])) for k, name in enumerate(class_names)}


def _certificates(recorder: RunRecorder, engine: Engine, report_dir: Path) -> None:
    """Certification curves, radius heat maps and soundness checks, for the report."""
    # One entry per certifier and constant (Lipschitz) or configuration (smoothing): the
    # latest evaluation wins, at the place of the first.
    certifications: dict[str, Any] = {}
    for entry in engine.log.values():
        if entry.kind in ("certify_lipschitz", "certify_smoothing"):
            certifications[_certifier_key(entry.result)] = entry.result
    # One soundness entry per claim, also for claims that found the evaluation cached.
    checked = [(c, e.result) for e in engine.logged("soundness") for c in e.claims]
    if not certifications and not checked:
        return
    recorder.evaluations["certificates"] = [
        certification_entry(c, report_dir, engine) for c in certifications.values()
    ]
    soundness = []
    for nodeid, result in checked:
        claim = recorder.claims.get(nodeid, {})
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
    recorder.evaluations["soundness"] = soundness


def certification_entry(cert: Any, report_dir: Path, engine: Any) -> dict[str, Any]:
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
        # the input is the one the clean examples show: shared, not written again
        image = save_shared(report_dir, ex.name, "input", Image.fromarray(ex.image))
        Image.fromarray(rgb).save(
            folder / f"{i}-radius.png", format="PNG", compress_level=PNG_COMPRESS_LEVEL
        )
        out.append(
            {
                "name": ex.name,
                "image": image,
                "radius_map": f"certificates/{entry_id}/{i}-radius.png",
                "radius_max_shown": top,
                "median_radius": float(np.median(radius)),
                "certified_share_at": {
                    str(r): float((radius > r).mean()) for r in (0.05, 0.1, 0.17)
                },
            }
        )
    return out


def min_norm_entry(ev: Any) -> dict[str, Any]:
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


def _certifier_key(cert: Any) -> str:
    if isinstance(cert, LipschitzCertification):
        return repr(("lipschitz", cert.lipschitz.value))
    return repr(("smoothing", sorted(cert.config.items())))

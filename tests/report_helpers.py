"""Helpers of the report tests: a realistic record made without an audit, and what a page
draws.

:func:`fabricate_record` writes what an ``arnab2018`` + ``massena2025`` run of the demo model
on synthetic street scenes leaves: 32 attack evaluations and 8 noise baselines, each with
its worst examples, the clean evaluation with its examples, a Lipschitz certification with
radius maps and two soundness checks.  The images are drawn by the record's own writers
(:mod:`audit.record.images`, the radius maps of :mod:`audit.record.entries`) from the
synthetic scenes the demo audits, with perturbations, adversarial inputs and predictions
made to look like an attack's (sign noise at each epsilon, blocks of wrong labels growing
with it).  The record follows the schema.  With ``images=8`` it is the run issue 11
measured; with ``images=500`` each evaluation's worst examples are different scenes, the
most distinct images a record of that shape can show.  ``bench/report.py`` renders both.

:func:`drawn_images` lists the thumbnails a part of a page draws, resolved to the one
definition each has at the end of the page.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from audit.data.synthetic import STREET_CLASSES, STREET_PALETTE, render_street_scene
from audit.evaluations.attack import AdversarialExample
from audit.evaluations.clean import Example
from audit.record.diagnostics import CHECKS
from audit.record.entries import _write_radius_maps
from audit.record.images import write_adversarial_examples, write_examples

ARNAB_ATTACKS = (
    ("fgsm", "single_step"),
    ("fgsm-ll", "single_step"),
    ("ifgsm", "iterative"),
    ("ifgsm-ll", "iterative"),
)
ARNAB_EPS = ("0.25/255", "0.5/255", "1/255", "2/255", "4/255", "8/255", "16/255", "32/255")
RADII = (0.02, 0.05, 0.1, 0.17)
IGNORE = 255
SIZE = (128, 256)


@functools.cache
def _scene(index: int) -> tuple[np.ndarray, np.ndarray]:
    # Drawing a scene costs more than everything else here; evaluations share scenes.
    image, mask = render_street_scene(0, index, SIZE)
    image = (image * 255).round().astype(np.uint8)
    image.setflags(write=False)
    mask.setflags(write=False)
    return image, mask


def _corrupt(mask: np.ndarray, rng: np.random.Generator, blocks: int) -> np.ndarray:
    """A prediction: the ground truth with ``blocks`` rectangles of a wrong class."""
    out = np.where(mask == IGNORE, 0, mask)
    h, w = mask.shape
    for _ in range(blocks):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        dy, dx = rng.integers(4, h // 3), rng.integers(4, w // 3)
        out[y : y + dy, x : x + dx] = rng.integers(0, len(STREET_CLASSES))
    return out


def _clean_prediction(index: int) -> np.ndarray:
    # The same in every evaluation, as the model's prediction on a clean image is.
    return _corrupt(_scene(index)[1], np.random.default_rng(index), 2)


def _attacked(index: int, eps: float, seed: int) -> AdversarialExample:
    rng = np.random.default_rng(seed)
    image, mask = _scene(index)
    # Sign noise at eps (what a single step draws), smoothed a little as iterations do.
    delta = eps * np.sign(rng.standard_normal(image.shape)).astype(np.float32)
    adv = np.clip(image / 255.0 + delta, 0, 1)
    adv_u8 = (adv * 255).round().astype(np.uint8)
    change = adv - image / 255.0
    scale = max(float(np.abs(change).max()), 1e-12)
    perturbation = (np.clip(0.5 + 0.5 * change / scale, 0, 1) * 255).round().astype(np.uint8)
    clean = _clean_prediction(index)
    broken = int(2 + 60 * eps * 255 / 32)
    return AdversarialExample(
        name=f"synthetic-{index:06d}",
        image=image,
        adversarial=adv_u8,
        perturbation=perturbation,
        mask=mask,
        prediction_clean=clean,
        prediction_adv=_corrupt(clean, rng, broken),
        pixel_accuracy_clean=0.93,
        pixel_accuracy_adv=max(0.05, 0.93 - eps * 20),
    )


def _eps_value(text: str) -> float:
    num, den = text.split("/")
    return float(num) / float(den)


def _eval_id(attack: str, eps_text: str) -> str:
    slug = eps_text.replace(".", "p").replace("/", "-")
    return f"{attack}-linf-{slug}-{hashlib.sha256(attack.encode()).hexdigest()[:6]}"


def _claim(nodeid: str, kind: str, metric: str, verdict: str, evidence: dict[str, Any]) -> dict:
    suite, claim_id = nodeid.split("::")
    return {
        "nodeid": nodeid,
        "suite": suite,
        "id": claim_id,
        "statement": f"{metric} of {claim_id} holds",
        "kind": kind,
        "metric": metric,
        "params": {},
        "statistic": "estimate",
        "threshold": {"min": 0.5, "max": None},
        "timeout": None,
        "require_proof": False,
        "unproven": None,
        "source": f"/suites/{suite}.toml",
        "measured": 0.4 if verdict == "failed" else 0.8,
        "compared": 0.4 if verdict == "failed" else 0.8,
        "interval": None,
        "verdict": verdict,
        "message": f"claim '{claim_id}' {'violated' if verdict == 'failed' else 'holds'}",
        "duration_s": 1.5,
        "num_samples": 8,
        "evidence": evidence,
    }


def _attacks(
    report_dir: Path, images: int, per_evaluation: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    entries, claims = [], []
    families = (*ARNAB_ATTACKS, ("noise", "random"))
    for number, ((attack, family), eps_text) in enumerate(
        (pair, eps) for pair in families for eps in ARNAB_EPS
    ):
        eps = _eps_value(eps_text)
        eval_id = _eval_id(attack, eps_text)
        rng = np.random.default_rng(number)
        picked = rng.choice(images, size=min(per_evaluation, images), replace=False)
        examples = [_attacked(int(i), eps, seed=number * 1000 + int(i)) for i in picked]
        miou = max(0.05, 0.79 - 0.02 * number % 8 * eps * 255 / 8)
        entries.append(
            {
                "id": eval_id,
                "attack": attack,
                "library": "native",
                "family": family,
                "params": {},
                "norm": "linf",
                "eps": eps,
                "eps_text": eps_text,
                "resolution": list(SIZE),
                "num_samples": images,
                "metrics": {"miou": miou, "pixel_accuracy": 0.9, "mean_class_accuracy": 0.85},
                "clean_miou": 0.79,
                "iou_ratio": miou / 0.79,
                "success_rate": 1 - miou / 0.79,
                "noise": {"miou": 0.79, "success_rate": 0.001},
                "perturbation": {"linf_max": eps, "l2_mean": eps * 300, "l2_max": eps * 310},
                "gradients": {"passes": 1, "image_gradients": images, "zero": 0, "nonfinite": 0},
                "forward_passes": 10,
                "backward_passes": 1,
                "shared_by": 8,
                "seconds": 3.0,
                "examples": write_adversarial_examples(
                    report_dir, eval_id, examples, palette=STREET_PALETTE, ignore_index=IGNORE
                ),
            }
        )
        if family != "random":
            verdict = "failed" if eps_text in ("16/255", "32/255") else "passed"
            nodeid = f"arnab2018::{attack}[linf-{eps_text}]"
            claims.append(_claim(nodeid, "attack", "iou_ratio", verdict, {"evaluation": eval_id}))
    return entries, claims


def _clean(report_dir: Path, images: int, count: int) -> dict[str, Any]:
    examples = []
    for index in range(min(count, images)):
        image, mask = _scene(index)
        pred = _clean_prediction(index)
        examples.append(Example(f"synthetic-{index:06d}", image, mask, pred, 0.93))
    n = len(STREET_CLASSES)
    confusion = (np.eye(n, dtype=np.int64) * 9000 + 100).tolist()
    return {
        "num_samples": images,
        "num_pixels": images * SIZE[0] * SIZE[1],
        "resolution": list(SIZE),
        "metrics": {"miou": 0.79, "pixel_accuracy": 0.93, "mean_class_accuracy": 0.89},
        "intervals": {"miou": None, "pixel_accuracy": None, "mean_class_accuracy": None},
        "aggregation": "dataset-level: one confusion matrix summed over all images",
        "per_class": [
            {"name": name, "iou": 0.8, "accuracy": 0.9, "support": 9800, "color": list(colour)}
            for name, colour in zip(STREET_CLASSES, STREET_PALETTE, strict=True)
        ],
        "confusion_matrix": confusion,
        "examples": write_examples(
            report_dir, examples, palette=STREET_PALETTE, ignore_index=IGNORE
        ),
    }


def _certificates(report_dir: Path, count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    maps = []
    for index in range(count):
        image, mask = _scene(index)
        rng = np.random.default_rng(index)
        # Radii small at class boundaries, larger inside regions, as a margin map is.
        edges = (np.diff(mask, axis=0, prepend=mask[:1]) != 0) | (
            np.diff(mask, axis=1, prepend=mask[:, :1]) != 0
        )
        radius = np.where(edges, 0.0, 0.2) + rng.random(mask.shape) * 0.05
        maps.append(SimpleNamespace(name=f"synthetic-{index:06d}", image=image, radius=radius))
    certification = {
        "id": "lipschitz-0a1b2c",
        "certifier": "lipschitz",
        "lipschitz": {"value": 1.0002, "source": "proven", "proven": True},
        "radii": list(RADII),
        "certified_pixel_accuracy": [0.8, 0.6, 0.4, 0.2],
        "certified_fraction": [0.85, 0.65, 0.45, 0.25],
        "clean_pixel_accuracy": 0.93,
        "resolution": list(SIZE),
        "num_samples": count,
        "forward_passes": count,
        "seconds": 1.0,
        "kappa": 2**0.5,
        "examples": _write_radius_maps(report_dir, "lipschitz-0a1b2c", maps),
    }
    soundness = [
        {
            "claim": "massena2025::soundness",
            "eps": eps,
            "violations": 0,
            "checks": [{"attack": "pgd", "flipped": 0, "certified": 10000}],
            "counterexample": None,
            "falsified": None,
            "num_samples": count,
            "seconds": 2.0,
        }
        for eps in (0.1, 0.17)
    ]
    return certification, soundness


def fabricate_record(
    report_dir: Path, *, images: int = 8, attack_examples: int = 3, clean_examples: int = 4
) -> dict[str, Any]:
    """Write the example images of an ``arnab2018`` + ``massena2025`` run over ``images``
    synthetic scenes under ``report_dir`` and return its record (not written: callers
    render it or write it as they need)."""
    attacks, claims = _attacks(report_dir, images, attack_examples)
    certification, soundness = _certificates(report_dir, min(clean_examples, images))
    claims += [
        _claim("massena2025::certified-pa", "certified", "certified_pixel_accuracy", "passed", {}),
        _claim("massena2025::soundness", "certificate_soundness", "violations", "passed", {}),
    ]
    failed = sum(c["verdict"] == "failed" for c in claims)
    return {
        "schema_version": 1,
        "complete": True,
        "status": "failed" if failed else "passed",
        "summary": {
            "total": len(claims),
            "passed": len(claims) - failed,
            "failed": failed,
            "error": 0,
            "skipped": 0,
            "not_run": 0,
        },
        "progress": {
            "claims_done": len(claims),
            "claims_total": len(claims),
            "updated_at": "2026-12-03T12:00:00+00:00",
        },
        "provenance": {
            "started_at": "2026-12-03T11:50:00+00:00",
            "finished_at": "2026-12-03T12:00:00+00:00",
            "seed": 0,
            "device_requested": "auto",
            "device": "cpu",
            "batch_size": 8,
            "limit": images,
            "trust_pickle": {"enabled": False, "source": "default"},
            "command_line": ["pytest", "--audit", "demo", "--audit-suite", "arnab2018"],
            "versions": {"python": "3.11.7", "segaudit": "0.1.0"},
            "hostname": "fabricated",
            "duration_s": 600.0,
            "dataset": {
                "spec": "synthetic",
                "kind": "synthetic",
                "fingerprint": "d0" * 32,
                "num_samples": images,
                "class_names": list(STREET_CLASSES),
                "ignore_index": IGNORE,
                "resolution": list(SIZE),
            },
        },
        "suites": [
            {"name": name, "description": f"the built-in {name}", "path": f"/suites/{name}.toml"}
            for name in ("arnab2018", "massena2025")
        ],
        "errors": [],
        "claims": claims,
        "evaluations": {
            "clean": _clean(report_dir, images, clean_examples),
            "attacks": attacks,
            "certificates": [certification],
            "soundness": soundness,
        },
        "diagnostics": [],
        "diagnostic_checks": dict(CHECKS),
    }


def drawn_images(fragment: str, page: str) -> list[tuple[str, str, str]]:
    """``(alt text, full-resolution link, data URI)`` of each image ``fragment`` draws, in
    order; the data URI is that of the image's one definition in ``page``."""
    symbols = dict(
        re.findall(r'<symbol id="(thumb-\d+)"[^>]*><image [^>]*href="(data:[^"]+)"/>', page)
    )
    drawn = re.findall(
        r'<a class="thumb-link" href="([^"]*)"[^>]*><svg class="thumb" role="img" '
        r'aria-label="([^"]*)"[^>]*>.*?<use href="#(thumb-\d+)"/></svg></a>',
        fragment,
    )
    return [(alt, href, symbols[ident]) for href, alt, ident in drawn]


def section_html(page: str, key: str) -> str:
    """The markup of the page's section ``key`` (empty when it was not rendered)."""
    match = re.search(rf'<section id="{re.escape(key)}"[^>]*>.*?</section>', page, re.S)
    return match.group(0) if match else ""

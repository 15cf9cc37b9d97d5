"""Soundness checks: certificates checked from the other side, by attacks that must not beat them.

For each batch the clean logits give every pixel's certified radius.  Each listed attack
then tries, within the L2 ball of the claimed radius, to change the model's *own* clean
prediction (not the label: a certificate is about the prediction).  A pixel certified beyond
the radius whose prediction changed is a violation; so is an image where fewer pixels stay
correct under the attack than the joint-budget certificate guarantees.  Minimal-norm
attacks also give each pixel an empirical radius, which may never fall below the certified
one; the pairs (certified, empirical) are kept for the report's tightness scatter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from audit.attacks import build_attack, build_min_norm_attack, library_of, native_attack
from audit.attacks.base import project
from audit.attacks.radius import pixel_radii
from audit.certify import joint, margins
from audit.evaluations.attack import attack_context
from audit.evaluations.lipschitz import KAPPA, resolve_lipschitz
from audit.metrics import predict
from audit.threat import ThreatModel, parse_epsilon

if TYPE_CHECKING:
    from audit.engine import Batch, Engine

#: (certified, empirical) radius pairs kept per attack for the scatter
SCATTER_POINTS = 2000


@dataclass
class AttackCheck:
    attack: str
    certified_pixels: int = 0
    flipped_certified: int = 0
    flipped_any: int = 0
    metric_violations: int = 0
    max_norm: float = 0.0
    scatter: list[tuple[float, float]] = field(default_factory=list)
    tightness: list[float] = field(default_factory=list)  # certified / empirical, per pixel
    #: per certified pixel aimed at, the drop of its margin over the most the certificate
    #: allows for the perturbation used (sqrt(2) L ||delta||): how close the attack came to
    #: the certificate's limit; a sample of up to SCATTER_POINTS per batch, and the largest
    margin_use: list[float] = field(default_factory=list)
    margin_use_max: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        ratios = np.asarray(self.tightness, dtype=np.float64)
        used = np.asarray(self.margin_use, dtype=np.float64)
        return {
            "attack": self.attack,
            "certified_pixels": self.certified_pixels,
            "flipped_certified": self.flipped_certified,
            "flipped_any": self.flipped_any,
            "metric_violations": self.metric_violations,
            "max_perturbation_norm": self.max_norm,
            "scatter": [[round(c, 6), round(e, 6)] for c, e in self.scatter],
            "tightness_median": float(np.median(ratios)) if ratios.size else None,
            "margin_use_median": float(np.median(used)) if used.size else None,
            "margin_use_max": self.margin_use_max if used.size else None,
        }


@dataclass(frozen=True)
class SoundnessResult:
    eps: float
    lipschitz: Any  # LipschitzSource
    checks: tuple[AttackCheck, ...]
    counterexample: dict[str, Any] | None
    artifacts: dict[str, np.ndarray]
    falsified: Any  # a LowerBound above the claimed constant, or None
    num_samples: int
    seconds: float

    @property
    def violations(self) -> int:
        return sum(c.flipped_certified + c.metric_violations for c in self.checks) + (
            1 if self.falsified is not None else 0
        )


def _target_attack(name: str, steps: int) -> Any:
    params: dict[str, Any] = {}
    if library_of(name) != "native" or "steps" in native_attack(name).defaults:
        params["steps"] = steps
    if name in ("pgd", "cospgd", "segpgd"):
        params["restarts"] = 1
    return build_attack(name, params)


def _search(model, images, target, certified, eps, examples) -> torch.Tensor:
    """A hypothesis search over perturbation directions of norm ``eps`` for one that flips a
    certified pixel; returns the most damaging direction tried if none does."""
    _n, _, h, w = images.shape
    best = {"count": -1, "adv": images}

    def perturbation(spec: tuple[int, int, int, float]) -> torch.Tensor:
        noise_seed, row, col, spread = spec
        g = torch.Generator(device="cpu").manual_seed(noise_seed)
        delta = torch.randn(images.shape, generator=g).to(images.device)
        # Mass concentrated around one pixel: local perturbations are the ones that flip a
        # single pixel cheaply.
        yy = torch.arange(h, device=images.device).view(-1, 1) - row
        xx = torch.arange(w, device=images.device).view(1, -1) - col
        delta = delta * torch.exp(-(yy**2 + xx**2) / (2 * spread**2))
        norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return (images + eps * delta / norms).clamp(0, 1)

    def violates(spec: tuple[int, int, int, float]) -> bool:
        adv = perturbation(spec)
        with torch.no_grad():
            pred = predict(model(adv))
        count = int(((pred != target) & certified).sum())
        if count > best["count"]:
            best.update(count=count, adv=adv)
        return count > 0

    strategy = st.tuples(
        st.integers(0, 2**31 - 1),
        st.integers(0, h - 1),
        st.integers(0, w - 1),
        st.floats(1.0, float(max(h, w)), allow_nan=False),
    )
    with contextlib.suppress(NoSuchExample):
        find(
            strategy,
            violates,
            settings=settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                deadline=None,
            ),
        )
    return best["adv"]


def check_soundness(engine: Engine, params: Mapping[str, Any]) -> SoundnessResult:
    """The soundness check of a ``certificate_soundness`` claim's parameters, computed once
    per key and logged for every claim that asks (each gets its entry in the record)."""
    # Refused before the Lipschitz constant is resolved (a search that costs passes); each
    # batch is checked again in the loop, for datasets of mixed sizes.
    engine.check_radius(ThreatModel("l2", parse_epsilon(params["eps"])))

    def compute() -> SoundnessResult:
        with margins.full_float32():
            return run_soundness(engine, params)

    return engine.cached(
        engine.key_parts("soundness", **dict(params)), compute, log=True, sharded=True
    )


def run_soundness(engine: Engine, params: Mapping[str, Any]) -> SoundnessResult:
    """Every listed attack against the certified pixels, batch by batch."""
    p = params
    eps = parse_epsilon(p["eps"]).value
    threat = ThreatModel("l2", parse_epsilon(p["eps"]))
    lipschitz = resolve_lipschitz(engine, p["lipschitz"], falsify=False)
    falsified = None
    if lipschitz.lower is not None and lipschitz.lower.value > lipschitz.value * (1 + KAPPA):
        falsified = lipschitz.lower
    checks = {name: AttackCheck(name) for name in p["attacks"]}
    counterexample: dict[str, Any] | None = None
    artifacts: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    n_images = 0
    for batch in engine.batches():
        b = batch.number
        engine.check_radius(threat, batch.images.shape[1:])
        n_images += len(batch.names)
        with torch.no_grad():
            logits = engine.forward(batch.images, batch.names)
        target = predict(logits)
        _pred64, margin = margins.top2_margin(logits)
        radius = margins.certified_radius(logits, lipschitz.value, kappa=KAPPA)
        certified = radius > eps
        guaranteed = joint.certified_pixel_accuracy_counts(
            logits,
            batch.masks,
            lipschitz.value,
            torch.tensor([eps], dtype=torch.float64, device=logits.device),
            ignore_index=engine.ignore_index,
            kappa=KAPPA,
        )[:, 0, 0]
        labelled = batch.masks != engine.ignore_index
        # The attacks aim at the certified pixels only: flipping an uncertified pixel proves
        # nothing, and a loss spread over every pixel dilutes the gradient towards them.
        sentinel = max(255, engine.num_classes)
        aimed = torch.where(certified, target, torch.full_like(target, sentinel))
        ctx = attack_context(engine, engine.generator("soundness", p["eps"], b))
        # a batch whose every aimed-at pixel is flipped has nothing left to find
        ctx = dataclasses.replace(ctx, ignore_index=sentinel, stop_when_all_flipped=True)
        model = ctx.model
        n_certified = int(certified.sum())
        for name, check in checks.items():
            check.certified_pixels += n_certified
            if n_certified == 0 and (name == "search" or library_of(name) != "advlib"):
                continue  # nothing to beat at this radius (min-norm radii still compare)
            empirical = None
            if name == "search":
                adv = _search(model, batch.images, target, certified, eps, p["search_examples"])
            elif library_of(name) == "advlib":
                unbounded, empirical = _min_norm_path(
                    engine, name, p["min_norm_steps"], b, batch, target, model, ctx
                )
                adv = project(unbounded, batch.images, threat)
            else:
                adv = _target_attack(name, p["steps"])(batch.images, aimed, threat=threat, ctx=ctx)
            with torch.no_grad():
                adv_logits = model(adv)
            adv_pred = predict(adv_logits)
            delta_norm = (adv - batch.images).flatten(1).norm(dim=1)
            _margin_use(check, margin, adv_logits, target, certified, delta_norm, lipschitz.value)
            check.max_norm = max(check.max_norm, float(delta_norm.max()))
            changed = adv_pred != target
            flipped = changed & certified
            check.flipped_any += int(changed.sum())
            check.flipped_certified += int(flipped.sum())
            still_correct = ((adv_pred == batch.masks) & labelled).flatten(1).sum(1)
            check.metric_violations += int((still_correct < guaranteed).sum())
            if empirical is not None:
                _scatter(check, radius, empirical)
                # An empirical radius below the certified one is a flip inside the ball.
                below = torch.isfinite(empirical) & (empirical < radius) & (radius > 0)
                check.flipped_certified += int(below.sum())
            if counterexample is None and bool(flipped.any()):
                counterexample, artifacts = _counterexample(
                    batch, adv, flipped, margin, lipschitz.value, eps, name, radius
                )
    return SoundnessResult(
        eps=eps,
        lipschitz=lipschitz,
        checks=tuple(checks.values()),
        counterexample=counterexample,
        artifacts=artifacts,
        falsified=falsified,
        num_samples=n_images,
        seconds=time.perf_counter() - start,
    )


def _min_norm_path(engine, name, steps, b, batch, target, model, ctx):
    """A minimal-norm attack on every pixel's clean prediction, and each pixel's empirical
    radius along its path; it does not depend on the radius, so all radii of a sweep share it.
    """

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        generator = engine.generator("soundness_min_norm", name, steps, b)
        attack = build_min_norm_attack(name, {"steps": steps})
        unbounded = attack(
            batch.images, target, norm="l2", ctx=dataclasses.replace(ctx, generator=generator)
        )
        with torch.no_grad():
            radii = pixel_radii(model, batch.images, unbounded, norm="l2", steps=32)
        return unbounded, radii

    parts = engine.key_parts("soundness_min_norm", attack=name, steps=steps, batch=b)
    return engine.cached(parts, compute)


def _scatter(check: AttackCheck, radius: torch.Tensor, empirical: torch.Tensor) -> None:
    keep = torch.isfinite(empirical) & (radius > 0)
    cert = radius[keep].double().cpu()
    emp = empirical[keep].double().cpu()
    if cert.numel() == 0:
        return
    check.tightness.extend((cert / emp.clamp(min=1e-12)).tolist()[:SCATTER_POINTS])
    # Each batch's points are drawn without looking at earlier batches, and the list is a
    # prefix of their concatenation: the same points whichever rank drew which batch.
    step = max(1, cert.numel() // SCATTER_POINTS)
    points = zip(cert[::step].tolist(), emp[::step].tolist(), strict=True)
    check.scatter.extend(points)
    del check.scatter[SCATTER_POINTS:]


def _margin_use(check, margin, adv_logits, target, certified, delta_norm, lipschitz) -> None:
    """How much of what the certificate allows the attack used on the pixels it aimed at:
    the margin of the clean prediction can drop by at most sqrt(2) L ||delta||."""
    if not bool(certified.any()):
        return
    logits = adv_logits.double()
    own = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    rival = logits.scatter(1, target.unsqueeze(1), -math.inf).amax(1)
    allowed = math.sqrt(2) * lipschitz * delta_norm.double().view(-1, 1, 1)
    use = ((margin.double() - (own - rival)) / allowed.clamp(min=1e-300))[certified]
    use = use[torch.isfinite(use)].cpu()
    if use.numel():
        check.margin_use_max = max(check.margin_use_max, float(use.max()))
        step = max(1, use.numel() // SCATTER_POINTS)
        check.margin_use.extend(use[::step].tolist()[:SCATTER_POINTS])


def _counterexample(batch: Batch, adv, flipped, margin, lipschitz, eps, attack, radius):
    image_index, row, col = (int(v) for v in flipped.nonzero()[0])
    delta = (adv[image_index] - batch.images[image_index]).double()
    info = {
        "attack": attack,
        "sample": batch.names[image_index],
        "pixel": [row, col],
        "margin": float(margin[image_index, row, col]),
        "certified_radius": float(radius[image_index, row, col]),
        "lipschitz": lipschitz,
        "norm": "l2",
        "eps": eps,
        "perturbation_norm": float(delta.norm()),
        "flipped_pixels": int(flipped[image_index].sum()),
    }
    arrays = {
        "input": batch.images[image_index].cpu().numpy(),
        "perturbation": delta.cpu().numpy(),
    }
    return info, arrays

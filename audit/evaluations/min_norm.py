"""Minimal-norm evaluations: the smallest perturbation an attack finds, per image and pixel.

adv-lib's segmentation attacks return, per image, the smallest perturbation they find that
flips a target share of pixels; along its path each pixel gets an empirical radius.  Both
are kept (radii are state, not scores) for ``min_norm`` claims and the soundness checks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from audit.attacks import build_min_norm_attack
from audit.attacks.base import MinNormAttack
from audit.attacks.radius import image_radius, pixel_radii
from audit.errors import EvaluationError
from audit.evaluations.attack import Counters, attack_context
from audit.evaluations.guard import ModelGuard
from audit.metrics import predict

if TYPE_CHECKING:
    from audit.engine import Engine


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


def evaluate_min_norm(
    engine: Engine,
    name: str,
    params: Mapping[str, Any],
    norm: str,
    *,
    radius_steps: int = 32,
    adv_threshold: float = 0.99,
) -> MinNormEvaluation:
    """A minimal-norm attack's per-image and per-pixel radii, computed once per key; a
    parameter the attack does not take is a ``TypeError`` before any work."""
    attack = build_min_norm_attack(name, params)
    canonical = {k: attack.params[k] for k in sorted(attack.params)}
    parts = engine.key_parts(
        "min_norm",
        attack=name,
        params=canonical,
        norm=norm,
        radius_steps=radius_steps,
        adv_threshold=adv_threshold,
        **engine.attack_parts(),
    )
    return engine.cached(
        parts,
        lambda: run_min_norm(engine, attack, name, norm, radius_steps, adv_threshold),
        log=True,
        sharded=True,
    )


def run_min_norm(
    engine: Engine,
    attack: MinNormAttack,
    name: str,
    norm: str,
    radius_steps: int,
    adv_threshold: float,
) -> MinNormEvaluation:
    """Per-image and per-pixel empirical radii of a minimal-norm attack."""
    guard = ModelGuard(engine.module)
    counters = Counters()
    forward_start = engine.forward_passes
    images_r: list[torch.Tensor] = []
    pixels_r: list[torch.Tensor] = []
    reached: list[torch.Tensor] = []
    start = time.perf_counter()
    for batch in engine.batches():
        ctx = attack_context(
            engine, engine.generator(name, sorted(attack.params.items()), batch.number), counters
        )
        with engine.attack_autocast():
            adv = attack(batch.images, batch.masks, norm=norm, ctx=ctx).float()
        labelled = batch.masks != engine.ignore_index
        with torch.no_grad():
            clean_pred = predict(engine.forward(batch.images, batch.names))
            adv_pred = predict(engine.forward(adv, batch.names))
            radii = pixel_radii(
                _no_grad(ctx.model),
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

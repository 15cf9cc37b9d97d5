"""SegAudit's own attacks on dense outputs (reference.md section 2).

All are white-box, batched, device-agnostic and deterministic for a seeded generator.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from audit.attacks import losses, register_attack
from audit.attacks.base import (
    Attack,
    AttackContext,
    LossFn,
    all_flipped,
    ce,
    input_gradient,
    l2_normalise,
    project,
    random_start,
    worst_of_restarts,
)


def least_likely(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel argmin of the clean logits: the target of the least-likely attacks."""
    return logits.argmin(1)


def _step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "linf" else l2_normalise(grad)


@register_attack
class FGSM(Attack):
    """One signed-gradient step of size eps (Goodfellow et al.)."""

    name = "fgsm"
    norms = ("linf",)
    family = "single_step"
    shares_grid = True

    def run(self, images, labels, *, threat, ctx):
        grad, _ = input_gradient(images, labels, ctx, ce(ctx))
        return images + threat.eps.value * grad.sign()

    def grid(self, images, labels, threats, ctx):
        """All epsilons of a sweep from one gradient: the step direction does not depend on eps."""
        grad, _ = input_gradient(images, labels, ctx, ce(ctx))
        sign = grad.sign()
        return [project(images + t.eps.value * sign, images, t) for t in threats]


@register_attack
class FGSMLeastLikely(Attack):
    """One signed step *down* the loss of the least-likely class (Kurakin et al.)."""

    name = "fgsm-ll"
    norms = ("linf",)
    family = "single_step"
    shares_grid = True

    def _direction(self, images, ctx):
        with torch.no_grad():
            target = least_likely(ctx.model(images))
        grad, _ = input_gradient(images, target, ctx, _target_ce(ctx))
        return -grad.sign()

    def run(self, images, labels, *, threat, ctx):
        return images + threat.eps.value * self._direction(images, ctx)

    def grid(self, images, labels, threats, ctx):
        direction = self._direction(images, ctx)
        return [project(images + t.eps.value * direction, images, t) for t in threats]


def _target_ce(ctx: AttackContext) -> LossFn:
    # the least-likely target covers every pixel, ignored ones included
    return lambda logits, target: losses.ce_loss(logits, target, None)


def arnab_schedule(eps: float) -> tuple[float, int]:
    """Step 1/255 and min(eps*255 + 4, ceil(1.25 * eps*255)) iterations (Kurakin et al.,
    as Arnab et al. use it)."""
    e255 = eps * 255
    return 1 / 255, max(1, int(min(e255 + 4, math.ceil(1.25 * e255))))


class _Iterative(Attack):
    """Signed-gradient iterations with projection after each step."""

    norms = ("linf",)
    defaults: ClassVar[dict[str, Any]] = {"steps": None, "step_size": None}
    least_likely: ClassVar[bool] = False

    def run(self, images, labels, *, threat, ctx):
        step_size, steps = arnab_schedule(threat.eps.value)
        steps = self.params["steps"] or steps
        step_size = self.params["step_size"] or step_size
        if self.least_likely:
            with torch.no_grad():
                labels = least_likely(ctx.model(images))
            loss, sign = _target_ce(ctx), -1.0
        else:
            loss, sign = ce(ctx), 1.0
        adv = images.clone()
        for t in range(steps):
            grad, _ = input_gradient(adv, labels, ctx, loss)
            adv = project(adv + sign * step_size * grad.sign(), images, threat)
            ctx.on_step(t + 1, steps)
        return adv


@register_attack
class BIM(_Iterative):
    """Iterative FGSM (basic iterative method) with the Arnab et al. schedule."""

    name = "ifgsm"


@register_attack
class IterativeLeastLikely(_Iterative):
    """Iterative least-likely class method with the Arnab et al. schedule."""

    name = "ifgsm-ll"
    least_likely = True


@register_attack
class PGD(Attack):
    """Projected gradient descent (Madry et al.) with random start and restarts.

    Linf steps follow the gradient sign, L2 steps the per-image normalised gradient.  With
    restarts, each image keeps the restart that left it with the lowest pixel accuracy.
    """

    name = "pgd"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 20,
        "step_size": None,  # default 2.5 * eps / steps
        "restarts": 1,
        "random_start": True,
    }

    def loss(self, ctx: AttackContext, step: int, steps: int) -> LossFn:
        return ce(ctx)

    def run(self, images, labels, *, threat, ctx):
        steps = int(self.params["steps"])
        step_size = self.params["step_size"] or 2.5 * threat.eps.value / steps
        restarts = int(self.params["restarts"])

        def attempt() -> torch.Tensor:
            adv = images.clone()
            if self.params["random_start"]:
                adv = project(random_start(images, threat, ctx.generator), images, threat)
            for t in range(steps):
                grad, logits = input_gradient(adv, labels, ctx, self.loss(ctx, t, steps))
                if ctx.stop_when_all_flipped and all_flipped(logits, labels, ctx.ignore_index):
                    break  # this iterate already flips every pixel aimed at
                adv = project(adv + step_size * _step(grad, threat.norm), images, threat)
                ctx.on_step(t + 1, steps)
            return adv

        return worst_of_restarts(
            restarts, attempt, ctx.model, labels, losses.labelled(labels, ctx.ignore_index)
        )


@register_attack
class SegPGD(PGD):
    name = "segpgd"

    def loss(self, ctx, step, steps):
        return lambda logits, labels: losses.segpgd_loss(
            logits, labels, ctx.ignore_index, step, steps
        )


@register_attack
class CosPGD(PGD):
    name = "cospgd"

    def loss(self, ctx, step, steps):
        return lambda logits, labels: losses.cospgd_loss(logits, labels, ctx.ignore_index)


@register_attack
class RandomNoise(Attack):
    """Random perturbation on the ball's surface: the baseline every attack must beat.

    Linf noise is a random corner of the cube (each coordinate +-eps), L2 noise a uniformly
    random direction scaled to eps, so it spends the whole budget, as the attacks do.
    """

    name = "noise"
    family = "random"
    # one clean pass per batch for the whole grid, and one draw: every epsilon scales the
    # same direction, so the baseline's curve is not jagged by resampling
    shares_grid = True

    def grid(self, images, labels, threats, ctx):
        # each epsilon starts from the same generator state: the draw a run at that epsilon
        # alone makes, so a grid's results equal separate runs' bit for bit
        state = ctx.generator.get_state()
        advs = []
        for threat in threats:
            ctx.generator.set_state(state)
            advs.append(self(images, labels, threat=threat, ctx=ctx))
        return advs

    def run(self, images, labels, *, threat, ctx):
        gen = ctx.generator
        eps = threat.eps.value
        if threat.norm == "linf":
            signs = torch.randint(0, 2, images.shape, generator=gen, device=gen.device) * 2 - 1
            return images + eps * signs.to(images.device, images.dtype)
        direction = torch.randn(images.shape, generator=gen, device=gen.device)
        return images + eps * l2_normalise(direction.to(images.device, images.dtype))

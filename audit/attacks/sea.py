"""APGD on dense outputs and SEA, the ensemble of APGD runs with segmentation losses.

APGD (Croce and Hein, ICML 2020) replaces PGD's fixed step by a schedule: a step of 2 eps,
momentum 0.75, and checkpoints at which the step is halved, and the iterate sent back to the
best point so far, wherever the loss stopped improving.  SEA (Croce, Singh and Hein, "Towards
reliable evaluation and fast training of robust semantic segmentation models") runs APGD with
four segmentation losses (masked cross-entropy, masked spherical margin, Jensen-Shannon
divergence, class-balanced cross-entropy) and keeps, per image, the worst result of any of
them: different images and models fall to different losses.

The ensemble follows foolbox 3's shape: :class:`Ensemble` does the shared work (running the
members, keeping each image's worst case, reporting which member won it) and a variant only
says who its members are (:meth:`Ensemble.members`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from audit.attacks import losses, register_attack
from audit.attacks.base import (
    Attack,
    AttackContext,
    LossFn,
    l2_normalise,
    loss_gradient,
    project,
    random_start,
)
from audit.metrics import predict
from audit.threat import ThreatModel

#: APGD's losses by the name a claim (``loss``) or SEA's ``members`` uses
LOSSES: dict[str, Callable[[AttackContext], LossFn]] = {
    "ce": lambda ctx: lambda z, y: losses.ce_loss(z, y, ctx.ignore_index),
    "mask-ce": lambda ctx: lambda z, y: losses.masked_ce_loss(z, y, ctx.ignore_index),
    "mask-sph": lambda ctx: lambda z, y: losses.masked_spherical_loss(z, y, ctx.ignore_index),
    "js": lambda ctx: lambda z, y: losses.js_loss(z, y, ctx.ignore_index),
    "bal-ce": lambda ctx: lambda z, y: losses.balanced_ce_loss(z, y, ctx.ignore_index),
}
#: what an attack keeps per image as its worst case: the lowest of this score
OBJECTIVES: tuple[str, ...] = ("miou", "pixel_accuracy")
#: SEA's members, in the paper's order
SEA_MEMBERS: tuple[str, ...] = ("mask-ce", "bal-ce", "js", "mask-sph")
#: progressive radius reduction of the SEA code: 2 eps, 1.5 eps, then eps, for these
#: shares of the iterations (each stage starts from the previous one's best point)
RADIUS_STAGES: tuple[tuple[float, float], ...] = ((2.0, 0.3), (1.5, 0.3), (1.0, 0.4))


def image_scores(
    logits: torch.Tensor, labels: torch.Tensor, ctx: AttackContext, objective: str
) -> torch.Tensor:
    """Per-image score of a prediction, lower is worse for the model: pixel accuracy over
    labelled pixels, or the mean IoU over the classes in the image's truth or prediction.
    An image without labelled pixels scores 1 (nothing to attack there)."""
    pred = predict(logits)
    mask = losses.labelled(labels, ctx.ignore_index)
    if objective == "pixel_accuracy":
        right = (pred == labels) & mask
        count = mask.flatten(1).sum(1)
        return torch.where(count > 0, right.flatten(1).sum(1) / count.clamp(min=1), 1.0)
    k = ctx.num_classes
    n = labels.shape[0]
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    image = torch.arange(n, device=labels.device).view(n, 1, 1).expand_as(labels)
    flat = ((image * k + safe) * k + pred)[mask]
    cm = torch.bincount(flat, minlength=n * k * k).view(n, k, k).to(torch.float64)
    tp = cm.diagonal(dim1=1, dim2=2)
    union = cm.sum(1) + cm.sum(2) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), 0.0).sum(1)
    count = present.sum(1)
    return torch.where(count > 0, iou / count.clamp(min=1), 1.0).to(torch.float32)


def checkpoint_window(iterations: int) -> tuple[int, int, int]:
    """APGD's first checkpoint distance, its decrement and its floor: 22%, 3% and 6% of the
    iterations (at least 1 each), as in Croce and Hein's code."""
    return (
        max(int(0.22 * iterations), 1),
        max(int(0.03 * iterations), 1),
        max(int(0.06 * iterations), 1),
    )


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


@register_attack
class APGD(Attack):
    """Auto-PGD on dense outputs, Linf and L2, with any loss of :data:`LOSSES`.

    Each image returns the iterate with the lowest ``objective`` seen (its worst case), not
    the one with the highest loss: the loss is the means, the score the end.  With
    ``restarts``, each image keeps its worst restart; ``radius_schedule`` runs SEA's
    progressive radius reduction (2, 1.5, then 1 times eps).
    """

    name = "apgd"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 100,
        "restarts": 1,
        "random_start": True,
        "loss": "ce",
        "objective": "pixel_accuracy",
        "radius_schedule": False,
    }
    #: the claim fills ``objective`` from its metric (audit.claims.attack)
    selects_by_metric: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _check_whole(self.name, p, "steps")
        _check_whole(self.name, p, "restarts")
        _check_choice(self.name, p, "loss", tuple(LOSSES))
        _check_choice(self.name, p, "objective", OBJECTIVES)

    def run(self, images, labels, *, threat, ctx):
        return self.search(images, labels, threat, ctx)[0]

    def search(
        self, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, ctx: AttackContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial images and their scores (lower is worse), the worst restart per image."""
        restarts, steps = int(self.params["restarts"]), int(self.params["steps"])
        total = restarts * steps
        best, best_score = images, None
        for r in range(restarts):
            offset = r * steps
            inner = dataclasses.replace(
                ctx, on_step=lambda done, _, offset=offset: ctx.on_step(offset + done, total)
            )
            adv, score = self._stages(images, labels, threat, inner)
            if best_score is None:
                best, best_score = adv, score
                continue
            better = score < best_score
            best = torch.where(_per_image(better, adv), adv, best)
            best_score = torch.where(better, score, best_score)
        assert best_score is not None
        return best, best_score

    def _stages(self, images, labels, threat, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        steps = int(self.params["steps"])
        stages = RADIUS_STAGES if self.params["radius_schedule"] else ((1.0, 1.0),)
        counts = [int(share * steps) for _, share in stages[:-1]]
        counts.append(steps - sum(counts))
        start = None
        if self.params["random_start"]:
            start = random_start(images, threat, ctx.generator)
        done = 0
        result: tuple[torch.Tensor, torch.Tensor] | None = None
        for (scale, _), count in zip(stages, counts, strict=True):
            if count == 0:
                continue
            stage = ThreatModel(
                threat.norm, dataclasses.replace(threat.eps, value=scale * threat.eps.value)
            )
            x0 = images if start is None else project(start, images, stage)
            inner = dataclasses.replace(
                ctx, on_step=lambda d, _, done=done: ctx.on_step(done + d, steps)
            )
            result = self._apgd(images, labels, x0, stage, count, inner)
            start, done = result[0], done + count
        assert result is not None
        return result

    def _apgd(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        x0: torch.Tensor,
        threat: ThreatModel,
        steps: int,
        ctx: AttackContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean_loss = LOSSES[self.params["loss"]](ctx)
        # Per-image sums, not means: the same direction, but a per-pixel mean of saturated
        # losses (masked, JS) sends gradients into the denormal range, where a CPU backward
        # pass ran 3-10x slower (measured on LRASPP); the count is constant per image, so
        # comparisons of loss values are unchanged.
        count = losses.labelled(labels, ctx.ignore_index).flatten(1).sum(1).clamp(min=1)

        def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return mean_loss(z, y) * count

        objective = self.params["objective"]
        linf = threat.norm == "linf"
        eps = threat.eps.value
        n = images.shape[0]

        def step(x: torch.Tensor, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
            direction = grad.sign() if linf else l2_normalise(grad)
            return project(x + _per_image(size, x) * direction, images, threat)

        x = x0
        grad, logits, value = loss_gradient(x, labels, ctx, loss)
        score = image_scores(logits, labels, ctx, objective)
        # Worst case by the score (what is returned); best point by the loss (where a
        # checkpoint sends a stalled image back).
        worst, worst_score = x, score
        top, top_value, top_grad = x, value, grad
        size = torch.full((n,), 2.0 * eps, device=images.device)
        window, decrement, floor = checkpoint_window(steps)
        next_check, increases = window, torch.zeros(n, device=images.device)
        value_at_check, reduced_at_check = top_value.clone(), torch.ones(n, dtype=torch.bool)
        reduced_at_check = reduced_at_check.to(images.device)
        previous, previous_value = x, value
        for t in range(steps):
            z = step(x, grad, size)
            momentum = 1.0 if t == 0 else 0.75
            x_new = project(
                x + momentum * (z - x) + (1 - momentum) * (x - previous), images, threat
            )
            previous, x = x, x_new
            grad, logits, value = loss_gradient(x, labels, ctx, loss)
            ctx.on_step(t + 1, steps)
            score = image_scores(logits, labels, ctx, objective)
            lower = score <= worst_score  # later iterates win ties, as in the SEA code
            worst = torch.where(_per_image(lower, x), x, worst)
            worst_score = torch.minimum(score, worst_score)
            increases += (value > previous_value).to(increases.dtype)
            previous_value = value
            higher = value > top_value
            top = torch.where(_per_image(higher, x), x, top)
            top_grad = torch.where(_per_image(higher, grad), grad, top_grad)
            top_value = torch.where(higher, value, top_value)
            if t + 1 == next_check:
                # Croce and Hein's two conditions: the loss rose in at most 75% of the
                # window's steps, or the step was not halved last time and the best loss
                # has not moved since.
                stalled = (increases <= 0.75 * window) | (
                    ~reduced_at_check & (top_value <= value_at_check)
                )
                size = torch.where(stalled, size / 2, size)
                x = torch.where(_per_image(stalled, x), top, x)
                grad = torch.where(_per_image(stalled, grad), top_grad, grad)
                reduced_at_check, value_at_check = stalled, top_value.clone()
                increases = torch.zeros_like(increases)
                window = max(window - decrement, floor)
                next_check = t + 1 + window
        return worst, worst_score


class Ensemble(Attack):
    """Runs each member and keeps, per image, the result with the lowest ``objective``; the
    member that found it is reported through ``ctx.on_winners``.  Ties go to the earlier
    member.  A variant implements :meth:`members`."""

    selects_by_metric: ClassVar[bool] = True

    def members(self) -> list[tuple[str, APGD]]:
        """The members by name, in the order they run."""
        raise NotImplementedError

    def run(self, images, labels, *, threat, ctx):
        members = self.members()
        budget = sum(int(m.params["steps"]) * int(m.params["restarts"]) for _, m in members)
        best, best_score, winner = images, None, torch.zeros(0)
        done = 0
        for index, (_, member) in enumerate(members):
            inner = dataclasses.replace(
                ctx, on_step=lambda d, _, done=done: ctx.on_step(done + d, budget)
            )
            adv, score = member.search(images, labels, threat, inner)
            done += int(member.params["steps"]) * int(member.params["restarts"])
            if best_score is None:
                best, best_score = adv, score
                winner = torch.zeros(len(score), dtype=torch.long, device=score.device)
                continue
            better = score < best_score
            best = torch.where(_per_image(better, adv), adv, best)
            best_score = torch.where(better, score, best_score)
            winner = torch.where(better, index, winner)
        names = [name for name, _ in members]
        ctx.on_winners([names[i] for i in winner.tolist()])
        return best


@register_attack
class SEA(Ensemble):
    """SEA: APGD with each of SEA's losses, the worst result per image.

    Defaults follow the paper: 300 iterations per member, one restart, random start, the
    progressive radius reduction of the authors' code.  ``members`` is a comma-separated
    subset of :data:`SEA_MEMBERS`.  The cost is members x restarts x iterations forward and
    backward passes per batch.
    """

    name = "sea"
    defaults: ClassVar[dict[str, Any]] = {
        "iterations": 300,
        "restarts": 1,
        "members": ",".join(SEA_MEMBERS),
        "objective": "miou",
        "radius_schedule": True,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _check_whole(self.name, p, "iterations")
        _check_whole(self.name, p, "restarts")
        _check_choice(self.name, p, "objective", OBJECTIVES)
        names = member_names(p["members"])
        p["members"] = ",".join(names)

    def members(self) -> list[tuple[str, APGD]]:
        p = self.params
        return [
            (
                name,
                APGD(
                    steps=p["iterations"],
                    restarts=p["restarts"],
                    loss=name,
                    objective=p["objective"],
                    radius_schedule=p["radius_schedule"],
                ),
            )
            for name in p["members"].split(",")
        ]


def member_names(value: Any) -> list[str]:
    """SEA's ``members``: a comma-separated, non-empty subset of :data:`SEA_MEMBERS` without
    repeats, in the given order; ``ValueError`` naming the accepted ones."""
    accepted = ", ".join(SEA_MEMBERS)
    if not isinstance(value, str):
        raise ValueError(f"attack 'sea': members must be a string such as {accepted!r}")
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in SEA_MEMBERS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"attack 'sea': members must name each of {accepted} at most once, got {value!r}"
        )
    return names


def _check_whole(attack: str, params: dict[str, Any], key: str) -> None:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"attack {attack!r}: {key} must be a whole number >= 1, got {value!r}")


def _check_choice(attack: str, params: dict[str, Any], key: str, choices: tuple[str, ...]) -> None:
    if params[key] not in choices:
        raise ValueError(
            f"attack {attack!r}: {key} must be one of {', '.join(choices)}, got {params[key]!r}"
        )

"""Attacks as small classes with one ``run`` method and an explicit threat model.

``Attack.__call__`` does the shared work once for every attack: it checks the threat model,
keeps the model's parameters out of autograd, and projects the result onto the epsilon ball
and onto [0, 1].  A concrete attack implements only ``run``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from audit.attacks import losses
from audit.metrics import predict
from audit.threat import ThreatModel

Model = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackContext:
    """What an attack needs besides images and labels."""

    model: Model
    ignore_index: int | None
    num_classes: int
    generator: torch.Generator
    #: called with each input gradient a native attack computes, so the engine can watch
    #: for zero or non-finite gradients (signs of gradient masking)
    on_gradient: Callable[[torch.Tensor], None] = lambda grad: None
    #: called after each step of an iterative attack with (steps done, steps): the engine
    #: records the progress and stops a claim whose time budget is spent
    on_step: Callable[[int, int], None] = lambda done, total: None
    #: called by an ensemble with the member that won each image of the batch, in batch
    #: order, so the evaluation can record which member found each worst case
    on_winners: Callable[[list[str]], None] = lambda members: None
    #: stop iterating once every labelled pixel of every image is misclassified: nothing is
    #: left to find (the soundness checks, whose labels are the pixels they aim at)
    stop_when_all_flipped: bool = False


def all_flipped(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> bool:
    """Whether every labelled pixel of the batch is predicted as another class."""
    wrong = predict(logits) != labels
    if ignore_index is not None:
        wrong |= labels == ignore_index
    return bool(wrong.all())


class Attack(ABC):
    """Base class: subclasses set ``name``, ``norms`` and implement :meth:`run`."""

    name: ClassVar[str]
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    #: "single_step", "iterative", "min_norm" or "random": what the diagnostics compare
    family: ClassVar[str] = "iterative"
    #: where the implementation comes from: "native", "torchattacks", "foolbox", "advlib"
    library: ClassVar[str] = "native"
    #: whether :meth:`grid` computes a whole epsilon sweep at the cost of one epsilon
    shares_grid: ClassVar[bool] = False
    #: keyword parameters the attack accepts, with defaults
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = with_defaults(self.name, self.defaults, params)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        threat: ThreatModel,
        ctx: AttackContext,
    ) -> torch.Tensor:
        return self.within(threat, images, lambda x: self.run(x, labels, threat=threat, ctx=ctx))

    def within(
        self,
        threat: ThreatModel,
        images: torch.Tensor,
        attack: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``attack`` of the detached ``images`` projected onto the ball and [0, 1]: the
        shared work of ``__call__``, for :meth:`grid` overrides too.  A norm the attack does
        not support is a ``ValueError``; at eps 0 the images come back and nothing runs."""
        if threat.norm not in self.norms:
            raise ValueError(
                f"attack {self.name!r} supports {', '.join(self.norms)}, not {threat.norm}"
            )
        images = images.detach()
        if threat.eps.value == 0:
            return images.clone()
        return project(attack(images).detach(), images, threat)

    def grid(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        threats: list[ThreatModel],
        ctx: AttackContext,
    ) -> list[torch.Tensor]:
        """Adversarial images for each threat of a sweep (attacks that can, share the work)."""
        return [self(images, labels, threat=t, ctx=ctx) for t in threats]

    @abstractmethod
    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        threat: ThreatModel,
        ctx: AttackContext,
    ) -> torch.Tensor:
        """Return adversarial images; the base class projects them onto the ball and [0, 1]."""


def with_defaults(
    name: str, defaults: Mapping[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """``params`` over ``defaults``; ``TypeError`` naming any parameter the attack lacks."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(
            f"attack {name!r} got unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(defaults) or 'none'}"
        )
    return {**defaults, **params}


def input_gradient(
    x: torch.Tensor, labels: torch.Tensor, ctx: AttackContext, loss: LossFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-image loss w.r.t. the input only, and the logits.

    ``torch.autograd.grad`` with ``inputs=x`` leaves every parameter's ``.grad`` untouched,
    so an attack never changes the user's model, even one whose parameters require grad.
    """
    grad, logits, _ = loss_gradient(x, labels, ctx, loss)
    return grad, logits


def loss_gradient(
    x: torch.Tensor, labels: torch.Tensor, ctx: AttackContext, loss: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`input_gradient` plus the per-image loss values (for attacks that track them)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = ctx.model(x)
        values = loss(logits, labels)
        (grad,) = torch.autograd.grad(values.sum(), x)
    ctx.on_gradient(grad)
    return grad.detach(), logits.detach(), values.detach()


def project(adv: torch.Tensor, images: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Onto the threat model's ball around ``images``, then into [0, 1]."""
    delta = adv - images
    eps = threat.eps.value
    if threat.norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        factor = (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * factor
    # Clipping into [0, 1] can only shrink |delta| per coordinate, so the result stays in
    # the ball for both norms.
    return (images + delta).clamp(0.0, 1.0)


def l2_normalise(grad: torch.Tensor) -> torch.Tensor:
    norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
    return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def random_start(images: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
    """A uniform point of the Linf ball, or a uniform point of the L2 ball."""
    eps = threat.eps.value
    if threat.norm == "linf":
        noise = torch.rand(images.shape, generator=gen, device=gen.device) * 2 - 1
        return images + eps * noise.to(images.device)
    direction = torch.randn(images.shape, generator=gen, device=gen.device).to(images.device)
    direction = l2_normalise(direction)
    d = images[0].numel()
    radius = torch.rand(images.shape[0], generator=gen, device=gen.device).to(images.device)
    radius = eps * radius ** (1.0 / d)
    return images + direction * radius.view(-1, *([1] * (images.dim() - 1)))


def ce(ctx: AttackContext) -> LossFn:
    return lambda logits, labels: losses.ce_loss(logits, labels, ctx.ignore_index)


class MinNormAttack(ABC):
    """An attack that searches the smallest perturbation flipping most pixels (no budget).

    ``__call__`` returns adversarial images in [0, 1]; the norm of ``adv - images`` per image
    is the attack's empirical radius, and :func:`audit.attacks.radius.pixel_radii` turns the
    path from ``images`` to ``adv`` into per-pixel radii.
    """

    name: ClassVar[str]
    norms: ClassVar[tuple[str, ...]] = ("l2",)
    family: ClassVar[str] = "min_norm"
    library: ClassVar[str] = "native"
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = with_defaults(self.name, self.defaults, params)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, *, norm: str, ctx: AttackContext
    ) -> torch.Tensor:
        if norm not in self.norms:
            raise ValueError(f"attack {self.name!r} minimises {', '.join(self.norms)}, not {norm}")
        images = images.detach()
        return self.run(images, labels, norm=norm, ctx=ctx).detach().clamp(0.0, 1.0)

    @abstractmethod
    def run(
        self, images: torch.Tensor, labels: torch.Tensor, *, norm: str, ctx: AttackContext
    ) -> torch.Tensor:
        """Return adversarial images; the base class clips them into [0, 1]."""


class CallableModule(torch.nn.Module):
    """``ctx.model`` as an ``nn.Module`` for libraries that insist on one.

    It owns no parameters (so a library that calls ``model.train()``, ``requires_grad_`` or
    ``zero_grad`` touches nothing of the user's model) and ignores mode switches: the audited
    model stays in eval mode whatever the library does.
    """

    def __init__(self, fn: Model) -> None:
        super().__init__()
        # Stored past nn.Module.__setattr__: an nn.Module ``fn`` must not become a submodule,
        # or its parameters would show in ``parameters()`` and follow ``.to()``.
        self.__dict__["_fn"] = fn
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def train(self, mode: bool = True) -> CallableModule:
        return self


def worst_of_restarts(
    restarts: int,
    attempt: Callable[[], torch.Tensor],
    model: Model,
    labels: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Run ``attempt`` ``restarts`` times; each image keeps the result with the lowest pixel
    accuracy over its labelled ``mask``.  One restart costs no extra forward pass."""
    best, best_acc = attempt(), None
    for _ in range(restarts - 1):
        if best_acc is None:
            best_acc = _masked_accuracy(model, best, labels, mask)
        candidate = attempt()
        acc = _masked_accuracy(model, candidate, labels, mask)
        better = (acc < best_acc).view(-1, *([1] * (candidate.dim() - 1)))
        best = torch.where(better, candidate, best)
        best_acc = torch.minimum(acc, best_acc)
    return best


def _masked_accuracy(
    model: Model, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        pred = predict(model(images))
    return losses.per_image_mean((pred == labels).float(), mask)

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
    #: called once per forward+backward pass, so the engine can count them
    on_gradient: Callable[[], None] = lambda: None


class Attack(ABC):
    """Base class: subclasses set ``name``, ``norms`` and implement :meth:`run`."""

    name: ClassVar[str]
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    #: keyword parameters the attack accepts, with defaults
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"attack {self.name!r} got unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(self.defaults) or 'none'}"
            )
        self.params = {**self.defaults, **params}

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        threat: ThreatModel,
        ctx: AttackContext,
    ) -> torch.Tensor:
        if threat.norm not in self.norms:
            raise ValueError(
                f"attack {self.name!r} supports {', '.join(self.norms)}, not {threat.norm}"
            )
        images = images.detach()
        if threat.eps.value == 0:
            return images.clone()
        adv = self.run(images, labels, threat=threat, ctx=ctx)
        return project(adv.detach(), images, threat)

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


def input_gradient(
    x: torch.Tensor, labels: torch.Tensor, ctx: AttackContext, loss: LossFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-image loss w.r.t. the input only, and the logits.

    ``torch.autograd.grad`` with ``inputs=x`` leaves every parameter's ``.grad`` untouched,
    so an attack never changes the user's model, even one whose parameters require grad.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = ctx.model(x)
        value = loss(logits, labels).sum()
        (grad,) = torch.autograd.grad(value, x)
    ctx.on_gradient()
    return grad.detach(), logits.detach()


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

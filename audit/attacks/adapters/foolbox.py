"""foolbox's gradient attacks on dense outputs, behind SegAudit's :class:`Attack` API.

A claim names them ``foolbox:<Name>`` (``foolbox:LinfPGD``, ``foolbox:FGSM``); foolbox's long
class names (``LinfProjectedGradientDescentAttack``) and its aliases (``PGD``) work too.
foolbox 3 was written for classifiers: its losses and criteria assume N x K logits.  Here:

* **Loss.**  Each attack is subclassed so that ``get_loss_fn`` returns the per-pixel
  cross-entropy averaged over each image's labelled pixels (the ignore label excluded, exactly
  SegAudit's own :func:`~audit.attacks.losses.ce_loss`), summed over the batch.
* **Criterion.**  :class:`DenseMisclassification` judges per-pixel outputs: an image is
  adversarial once the fraction of its labelled pixels that are misclassified reaches a
  threshold (0.99).  foolbox uses the criterion for its labels and its success flags; the
  adversarial images do not depend on it.
* **Gradients.**  eagerpy computes input gradients with ``loss.backward()``, which would also
  accumulate ``.grad`` on every model parameter that requires grad.  The subclasses compute
  them with ``torch.autograd.grad(inputs=x)`` instead, so the user's model is untouched, and
  report each one to ``ctx.on_gradient``.
* **Model.**  foolbox gets ``fb.PyTorchModel`` around a
  :class:`~audit.attacks.base.CallableModule` (no parameters, inert mode switches) that calls
  ``ctx.model``, so every forward pass is counted and the model is never switched.
* **Randomness.**  Random starts draw from torch's global RNG (through eagerpy); each run
  forks it and seeds it from ``ctx.generator``, so runs are reproducible for a seed and the
  caller's global RNG state is left as it was.

Parameters.  The common names map onto foolbox's keywords: ``steps`` -> ``steps``,
``step_size`` -> ``abs_stepsize`` (``abs_stepsize`` itself is accepted as a synonym),
``random_start`` -> ``random_start``; ``restarts`` repeats the attack and keeps, per image,
the run with the lowest pixel accuracy.  Any other key goes verbatim to the foolbox
constructor (``rel_stepsize``, ``momentum``, ``adam_beta1``...).  ``epsilon`` comes from the
threat model.

Step size.  foolbox's own default is relative to epsilon (``rel_stepsize``; e.g. LinfPGD
0.01/0.3 * eps with 40 steps, L2PGD 0.025 * eps with 50 steps), so it is kept when
``step_size`` is not given.  It is tuned for foolbox's own step counts: with fewer ``steps``
the attack may never reach the edge of the ball, so set ``step_size`` (SegAudit's PGD uses
2.5 * eps / steps) or ``rel_stepsize`` together with ``steps``.

Not supported: the minimal-norm attacks (CW, FMN, DDN, DeepFool, EAD, ...) and the decision
attacks fail on dense labels, and the L1 attacks have no SegAudit threat model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import eagerpy as ep
import foolbox as fb  # an ImportError here becomes AttackUnavailable in the registry
import torch
from foolbox.criteria import Misclassification

from audit.attacks import losses
from audit.attacks.adapters._common import LibraryAttack
from audit.attacks.base import Attack, AttackContext, CallableModule
from audit.metrics import predict

#: foolbox attacks verified on N x K x H x W logits with N x H x W labels -> their norm
SUPPORTED: dict[str, str] = {
    "FGSM": "linf",
    "FGM": "l2",
    "LinfPGD": "linf",
    "L2PGD": "l2",
    "LinfBasicIterativeAttack": "linf",
    "L2BasicIterativeAttack": "l2",
    "MIFGSM": "linf",
    "L2MomentumIterativeFastGradientMethod": "l2",
    "LinfAdamPGD": "linf",
    "L2AdamPGD": "l2",
    "LinfAdamBasicIterativeAttack": "linf",
    "L2AdamBasicIterativeAttack": "l2",
}

#: other names foolbox gives the same attacks -> the name in :data:`SUPPORTED`
ALIASES: dict[str, str] = {
    "LinfFastGradientAttack": "FGSM",
    "L2FastGradientAttack": "FGM",
    "PGD": "LinfPGD",
    "LinfProjectedGradientDescentAttack": "LinfPGD",
    "L2ProjectedGradientDescentAttack": "L2PGD",
    "LinfMomentumIterativeFastGradientMethod": "MIFGSM",
    "AdamPGD": "LinfAdamPGD",
    "LinfAdamProjectedGradientDescentAttack": "LinfAdamPGD",
    "L2AdamProjectedGradientDescentAttack": "L2AdamPGD",
}

#: one gradient step (the rest are iterative)
SINGLE_STEP: frozenset[str] = frozenset({"FGSM", "FGM"})

#: SegAudit's common parameter names -> foolbox's keywords (``restarts`` is the adapter's)
_MAPPED = {"steps": "steps", "step_size": "abs_stepsize", "random_start": "random_start"}


def build(name: str, params: Mapping[str, Any]) -> Attack:
    """The foolbox attack ``name`` (any case, aliases too) with ``params``; ``TypeError`` for
    a parameter it does not accept, :class:`AttackUnavailable` for an unsupported name."""
    return FoolboxAttack.build(name, params)


class FoolboxAttack(LibraryAttack):
    """Base of the per-attack classes :func:`build` returns (step_size None by default:
    foolbox's own ``rel_stepsize``; every attack has a random start, so all restart)."""

    library = "foolbox"
    supported = SUPPORTED
    aliases = ALIASES
    single_step = SINGLE_STEP
    step_keyword = "abs_stepsize"
    relative_step = "rel_stepsize"

    @classmethod
    def library_class_of(cls, name: str) -> type:
        return dense_attack_class(getattr(fb.attacks, name))

    def __init__(self, **params: Any) -> None:
        if "epsilon" in params or "epsilons" in params:
            raise TypeError(
                f"attack {self.name!r} got an epsilon parameter; epsilon comes from the "
                f"claim's threat model; accepted: {', '.join(self.defaults)}"
            )
        super().__init__(**params)

    def library_attack(self, ctx: AttackContext) -> Any:
        """The (dense) foolbox attack object for one run."""
        keywords = self.passed_through()
        for ours, theirs in _MAPPED.items():
            if ours in self.params:
                keywords[theirs] = self.params[ours]
        attack = self.library_class(**keywords)
        attack.ignore_index = ctx.ignore_index
        attack.on_gradient = ctx.on_gradient
        return attack

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.clamp(0.0, 1.0)  # foolbox asserts that inputs lie within the bounds

    def prepare(self, images, labels, mask, *, threat, ctx):
        # CallableModule keeps ``ctx.model`` out of the module tree: ``PyTorchModel`` calls
        # ``.to(device)`` on what it gets.
        model = fb.PyTorchModel(CallableModule(ctx.model), bounds=(0, 1), device=images.device)
        criterion = DenseMisclassification(labels, ignore_index=ctx.ignore_index)

        def once() -> torch.Tensor:
            attack = self.library_attack(ctx)
            _, out, _ = attack(model, images, criterion, epsilons=threat.eps.value)
            return out

        return once


class DenseMisclassification(Misclassification):
    """Per-pixel misclassification: an image is adversarial when at least ``threshold`` of
    its labelled pixels are misclassified (pixels labelled ``ignore_index`` do not count; an
    image with none is never adversarial).

    ``labels`` are N x H x W class indices; the outputs it judges are N x K x H x W logits.
    """

    def __init__(
        self, labels: Any, *, ignore_index: int | None = 255, threshold: float = 0.99
    ) -> None:
        super().__init__(labels)
        self.ignore_index = ignore_index
        self.threshold = threshold

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(labels of shape {tuple(self.labels.shape)}, "
            f"ignore_index={self.ignore_index}, threshold={self.threshold})"
        )

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        outputs_, restore_type = ep.astensor_(outputs)
        logits, labels = outputs_.raw, self.labels.raw
        mask = losses.labelled(labels, self.ignore_index)
        wrong = (predict(logits) != labels) & mask
        count = mask.flatten(1).sum(1)
        fraction = wrong.flatten(1).sum(1) / count.clamp(min=1)
        return restore_type(ep.astensor((fraction >= self.threshold) & (count > 0)))


class _DenseGradient:
    """Mixin over a foolbox gradient attack: a per-pixel loss and input-only gradients."""

    ignore_index: int | None = 255
    on_gradient: Callable[[torch.Tensor], None] = staticmethod(lambda grad: None)

    def get_loss_fn(self, model: Any, labels: ep.Tensor) -> Callable[[ep.Tensor], ep.Tensor]:
        """Mean cross-entropy over each image's labelled pixels, summed over the batch."""
        ignore_index = self.ignore_index

        def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
            logits = model(inputs).raw
            return ep.astensor(losses.ce_loss(logits, labels.raw, ignore_index).sum())

        return loss_fn

    def value_and_grad(
        self, loss_fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """Like eagerpy's, but ``autograd.grad(inputs=x)``: no ``.grad`` on model parameters."""
        raw = x.raw.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(ep.astensor(raw)).raw
            (grad,) = torch.autograd.grad(loss, raw)
        self.on_gradient(grad)
        return ep.astensor(loss.detach()), ep.astensor(grad)


@cache
def dense_attack_class(library_class: type) -> type:
    """``library_class`` with :class:`_DenseGradient`'s loss and gradient."""
    return type(f"Dense{library_class.__name__}", (_DenseGradient, library_class), {})

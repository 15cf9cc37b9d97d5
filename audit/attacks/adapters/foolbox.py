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

import inspect
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar

import eagerpy as ep
import foolbox as fb  # an ImportError here becomes AttackUnavailable in the registry
import torch
from foolbox.criteria import Misclassification

from audit.attacks import losses
from audit.attacks.adapters._common import check_counts, seeded_global_rng
from audit.attacks.base import Attack, AttackContext, CallableModule, Model, worst_of_restarts
from audit.errors import AttackUnavailable
from audit.threat import ThreatModel

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

_COMMON = ("steps", "step_size", "random_start", "restarts")
_MAPPED = {"steps": "steps", "step_size": "abs_stepsize", "random_start": "random_start"}


def build(name: str, params: Mapping[str, Any]) -> Attack:
    """The foolbox attack ``name`` (any case, aliases too) with ``params``; ``TypeError`` for
    a parameter it does not accept, :class:`AttackUnavailable` for an unsupported name."""
    return _attack_class(_canonical(name))(**dict(params))


def _canonical(name: str) -> str:
    by_lower = {n.lower(): n for n in SUPPORTED}
    by_lower.update({alias.lower(): target for alias, target in ALIASES.items()})
    if name.lower() not in by_lower:
        raise AttackUnavailable(
            f"foolbox attack {name!r} is not supported on segmentation outputs; "
            f"supported: {', '.join(SUPPORTED)} (aliases: {', '.join(ALIASES)})"
        )
    return by_lower[name.lower()]


@cache
def _attack_class(name: str) -> type[FoolboxAttack]:
    """A :class:`FoolboxAttack` subclass per attack, so ``name``, ``norms``, ``family`` and
    ``defaults`` are class attributes, as for every other attack."""
    library_class = getattr(fb.attacks, name)
    return type(
        f"Foolbox{name}",
        (FoolboxAttack,),
        {
            "name": f"foolbox:{name}",
            "norms": (SUPPORTED[name],),
            "family": "single_step" if name in SINGLE_STEP else "iterative",
            "library_class": dense_attack_class(library_class),
            "defaults": _defaults(library_class),
        },
    )


def _library_keywords(library_class: type) -> dict[str, Any]:
    signature = inspect.signature(library_class.__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _defaults(library_class: type) -> dict[str, Any]:
    keywords = _library_keywords(library_class)
    out: dict[str, Any] = {}
    if "steps" in keywords:
        out["steps"] = keywords.pop("steps")
    if "abs_stepsize" in keywords:
        out["step_size"] = keywords.pop("abs_stepsize")  # None: foolbox's rel_stepsize
    if "random_start" in keywords:
        out["random_start"] = keywords.pop("random_start")
        out["restarts"] = 1
    out.update(keywords)
    return out


class FoolboxAttack(Attack):
    """Base of the per-attack classes :func:`build` returns."""

    library = "foolbox"
    library_class: ClassVar[type]

    def __init__(self, **params: Any) -> None:
        if "epsilon" in params or "epsilons" in params:
            raise TypeError(
                f"attack {self.name!r} got an epsilon parameter; epsilon comes from the "
                f"claim's threat model; accepted: {', '.join(self.defaults)}"
            )
        if "abs_stepsize" in params and "step_size" in self.defaults:
            if "step_size" in params:
                raise TypeError(
                    f"attack {self.name!r} got both 'step_size' and its synonym "
                    "'abs_stepsize'; give one"
                )
            params["step_size"] = params.pop("abs_stepsize")
        if params.get("step_size") is not None and "rel_stepsize" in params:
            raise TypeError(
                f"attack {self.name!r} got both an absolute 'step_size' and 'rel_stepsize'; "
                "give one"
            )
        super().__init__(**params)
        check_counts(self.name, self.params)

    def library_attack(self, ctx: AttackContext) -> Any:
        """The (dense) foolbox attack object for one run."""
        keywords = {k: v for k, v in self.params.items() if k not in _COMMON}
        for ours, theirs in _MAPPED.items():
            if ours in self.params:
                keywords[theirs] = self.params[ours]
        attack = self.library_class(**keywords)
        attack.ignore_index = ctx.ignore_index
        attack.on_gradient = ctx.on_gradient
        return attack

    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        threat: ThreatModel,
        ctx: AttackContext,
    ) -> torch.Tensor:
        mask = losses.labelled(labels, ctx.ignore_index)
        keep = mask.flatten(1).any(1)
        adv = images.clone()
        if not bool(keep.any()):
            return adv
        # foolbox asserts that inputs lie within the model's bounds
        x, y, m = images[keep].clamp(0.0, 1.0), labels[keep], mask[keep]
        model = fb.PyTorchModel(_Module(ctx.model), bounds=(0, 1), device=images.device)
        criterion = DenseMisclassification(y, ignore_index=ctx.ignore_index)
        restarts = int(self.params.get("restarts", 1))

        def attempt() -> torch.Tensor:
            attack = self.library_attack(ctx)
            _, out, _ = attack(model, x, criterion, epsilons=threat.eps.value)
            out = out.detach()
            return torch.where(torch.isfinite(out), out, x)

        with seeded_global_rng(ctx.generator, images.device):
            best = worst_of_restarts(restarts, attempt, ctx.model, y, m)
        adv[keep] = best.to(adv.dtype)
        return adv


class _Module(CallableModule):
    """``ctx.model`` held in a closure, so a model that is an ``nn.Module`` never becomes a
    submodule (``PyTorchModel`` calls ``.to(device)`` on what it gets)."""

    def __init__(self, model: Model) -> None:
        super().__init__(lambda x: model(x))


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
        wrong = (logits.argmax(1) != labels) & mask
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

"""torchattacks' gradient-sign attacks on dense outputs, behind SegAudit's :class:`Attack` API.

A claim names them ``torchattacks:<Name>`` (``torchattacks:PGD``, ``torchattacks:MIFGSM``).
torchattacks was written for classifiers, so four things are done around it here:

* **Ignore label.**  Its ``nn.CrossEntropyLoss()`` has no ignore index, and label 255 crashes
  it.  The model it sees replaces the logits of ignored pixels by a constant zero (no gradient
  flows through them) and those pixels get label 0, so they add a constant to the loss and
  nothing to the gradient.  Images without a single labelled pixel are not attacked at all
  (there is nothing to attack, and the per-image gradient normalisation of the momentum
  attacks would divide zero by zero).
* **Model mode.**  It calls ``model.eval()`` and, when the model was training, ``train()``;
  it gets a :class:`~audit.attacks.base.CallableModule` around ``ctx.model`` instead, whose
  mode switches do nothing, so the audited model is never switched.  Every forward pass goes
  through ``ctx.model``, which the engine counts.
* **Device.**  It reads the device from ``next(model.parameters())`` and prints a warning
  when there is none; the wrapper carries one empty, frozen parameter on the images' device.
* **Randomness.**  Random starts draw from torch's global RNG.  Each run forks that RNG and
  seeds it from ``ctx.generator``, so a fixed seed gives identical results and the caller's
  global RNG state is left exactly as it was.

Parameters.  The common names map onto torchattacks' keywords: ``steps`` -> ``steps``,
``step_size`` -> ``alpha`` (``alpha`` itself is accepted as a synonym), ``random_start`` ->
``random_start``; ``restarts`` repeats a randomised attack and keeps, per image, the run with
the lowest pixel accuracy.  Any other key goes verbatim to the torchattacks constructor (e.g.
``decay`` for MIFGSM).  ``eps`` is never a parameter: it comes from the claim's threat model.

Step size.  torchattacks' default ``alpha`` is an absolute number tuned for eps = 8/255 and
10 steps (2/255), which is wrong at any other budget.  When ``step_size`` is not given it is
2.5 * eps / steps, like SegAudit's own PGD (exactly torchattacks' 2/255 at its own defaults);
for FFGSM, a single random step plus one gradient step, it is 1.25 * eps (the ratio of its
10/255 default to 8/255, as in Wong et al. 2020).  PGDL2's own default (0.2 at eps 1.0, 10
steps) is 2 * eps / steps; the 2.5 * eps / steps default is used there too, for consistency.

Not supported: DIFGSM and TIFGSM resize the input to a random *square* (labels no longer line
up with pixels), Jitter one-hot-encodes along the wrong axis, PIFGSM/PIFGSMPP name their budget
differently, and CW, DeepFool, APGD, APGDT, FAB, Square, SPSA, EAD* and the PGDRS variants index
logits per image; all of these fail or are meaningless on N x K x H x W logits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar

import torch
import torchattacks  # an ImportError here becomes AttackUnavailable in the registry
from torch import nn

from audit.attacks import losses
from audit.attacks.adapters._common import check_counts, seeded_global_rng
from audit.attacks.base import Attack, AttackContext, CallableModule, Model, worst_of_restarts
from audit.errors import AttackUnavailable
from audit.threat import ThreatModel

#: torchattacks attacks verified on N x K x H x W logits with N x H x W labels -> their norm
SUPPORTED: dict[str, str] = {
    "FGSM": "linf",
    "FFGSM": "linf",
    "BIM": "linf",
    "PGD": "linf",
    "PGDL2": "l2",
    "EOTPGD": "linf",
    "UPGD": "linf",
    "TPGD": "linf",
    "RFGSM": "linf",
    "MIFGSM": "linf",
    "NIFGSM": "linf",
    "SINIFGSM": "linf",
    "VMIFGSM": "linf",
    "VNIFGSM": "linf",
}

#: one gradient step (the rest are iterative)
SINGLE_STEP: frozenset[str] = frozenset({"FGSM", "FFGSM"})

#: attacks with a random component (a random start or random samples), which may restart
RANDOMISED: frozenset[str] = frozenset(
    {"FFGSM", "PGD", "PGDL2", "EOTPGD", "UPGD", "TPGD", "RFGSM", "VMIFGSM", "VNIFGSM"}
)

#: constructor arguments the adapter sets itself
_RESERVED = ("model", "eps")
#: SegAudit's common parameter names, translated rather than passed through
_COMMON = ("steps", "step_size", "random_start", "restarts")


def build(name: str, params: Mapping[str, Any]) -> Attack:
    """The torchattacks attack ``name`` (any case) with ``params``; ``TypeError`` for a
    parameter it does not accept, :class:`AttackUnavailable` for an unsupported name."""
    return _attack_class(_canonical(name))(**dict(params))


def _canonical(name: str) -> str:
    by_lower = {n.lower(): n for n in SUPPORTED}
    if name.lower() not in by_lower:
        raise AttackUnavailable(
            f"torchattacks attack {name!r} is not supported on segmentation outputs; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    return by_lower[name.lower()]


@cache
def _attack_class(name: str) -> type[TorchattacksAttack]:
    """A :class:`TorchattacksAttack` subclass per attack, so ``name``, ``norms``, ``family``
    and ``defaults`` are class attributes, as for every other attack."""
    library_class = getattr(torchattacks, name)
    return type(
        f"Torchattacks{name}",
        (TorchattacksAttack,),
        {
            "name": f"torchattacks:{name}",
            "norms": (SUPPORTED[name],),
            "family": "single_step" if name in SINGLE_STEP else "iterative",
            "library_name": name,
            "library_class": library_class,
            "defaults": _defaults(name, library_class),
        },
    )


def _library_keywords(library_class: type) -> dict[str, Any]:
    """The constructor's keyword parameters and defaults, less the ones the adapter sets."""
    signature = inspect.signature(library_class.__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self"
        and p.name not in _RESERVED
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _defaults(name: str, library_class: type) -> dict[str, Any]:
    keywords = _library_keywords(library_class)
    out: dict[str, Any] = {}
    if "steps" in keywords:
        out["steps"] = keywords.pop("steps")
    if "alpha" in keywords:
        keywords.pop("alpha")
        out["step_size"] = None  # eps-relative, see the module docstring
    if "random_start" in keywords:
        out["random_start"] = keywords.pop("random_start")
    if name in RANDOMISED:
        out["restarts"] = 1
    out.update(keywords)
    return out


class TorchattacksAttack(Attack):
    """Base of the per-attack classes :func:`build` returns."""

    library = "torchattacks"
    library_name: ClassVar[str]
    library_class: ClassVar[type]

    def __init__(self, **params: Any) -> None:
        for key in _RESERVED:
            if key in params:
                raise TypeError(
                    f"attack {self.name!r} got parameter {key!r}, which SegAudit sets itself "
                    "(eps comes from the claim's threat model); "
                    f"accepted: {', '.join(self.defaults)}"
                )
        if "alpha" in params and "step_size" in self.defaults:
            if "step_size" in params:
                raise TypeError(
                    f"attack {self.name!r} got both 'step_size' and its synonym 'alpha'; give one"
                )
            params["step_size"] = params.pop("alpha")
        super().__init__(**params)
        check_counts(self.name, self.params)
        if self.library_name == "UPGD" and self.params.get("loss") != "ce":
            raise ValueError(
                f"attack {self.name!r}: only loss='ce' works on dense outputs (UPGD's "
                f"'dlr' and 'margin' losses index logits per image), got {self.params['loss']!r}"
            )

    def step_size(self, eps: float) -> float:
        """The step: the given one, or eps-relative (see the module docstring)."""
        if self.params.get("step_size") is not None:
            return float(self.params["step_size"])
        if self.library_name == "FFGSM":
            return 1.25 * eps
        return 2.5 * eps / int(self.params["steps"])

    def library_attack(self, module: nn.Module, eps: float, device: torch.device) -> Any:
        """The torchattacks object for one run at ``eps``."""
        keywords = {k: v for k, v in self.params.items() if k not in _COMMON}
        keywords["eps"] = eps
        if "steps" in self.params:
            keywords["steps"] = int(self.params["steps"])
        if "step_size" in self.params:
            keywords["alpha"] = self.step_size(eps)
        if "random_start" in self.params:
            keywords["random_start"] = bool(self.params["random_start"])
        attack = self.library_class(module, **keywords)
        attack.set_device(device)
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
        x, y, m = images[keep], labels[keep], mask[keep]
        safe = torch.where(m, y, torch.zeros_like(y))
        ignored = None if ctx.ignore_index is None else ~m
        module = DenseModule(ctx.model, ignored, ctx.on_gradient, device=images.device)
        restarts = int(self.params.get("restarts", 1))

        def attempt() -> torch.Tensor:
            attack = self.library_attack(module, threat.eps.value, images.device)
            out = attack(x, safe).detach()
            return torch.where(torch.isfinite(out), out, x)

        with seeded_global_rng(ctx.generator, images.device):
            best = worst_of_restarts(restarts, attempt, ctx.model, y, m)
        adv[keep] = best.to(adv.dtype)
        return adv


class DenseModule(CallableModule):
    """``ctx.model`` as torchattacks needs it: ignored pixels masked, mode switches inert.

    The model is held in a closure, never as a submodule, so the wrapper's ``parameters()``
    and ``.to()`` never reach the user's model; its only parameter is an empty, frozen
    device anchor for torchattacks' device detection.  Each forward pass registers a hook on
    (a view of) its input, so every input gradient the library computes reaches
    ``on_gradient`` (the engine's gradient-health watch).
    """

    def __init__(
        self,
        model: Model,
        ignored: torch.Tensor | None,
        on_gradient: Callable[[torch.Tensor], None],
        *,
        device: torch.device,
    ) -> None:
        super().__init__(lambda x: model(x))
        self.ignored = ignored
        self.watch = on_gradient
        self.device_anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            x = x.view_as(x)  # a fresh node per call: one hook per gradient, never repeated
            x.register_hook(self._report)
        logits = super().forward(x)
        if self.ignored is None:
            return logits
        return torch.where(self.ignored.unsqueeze(1), torch.zeros_like(logits), logits)

    def _report(self, grad: torch.Tensor) -> None:
        self.watch(grad.detach())

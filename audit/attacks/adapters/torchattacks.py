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

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torchattacks  # an ImportError here becomes AttackUnavailable in the registry
from torch import nn

from audit.attacks.adapters._common import LibraryAttack
from audit.attacks.base import Attack, CallableModule, Model

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


def build(name: str, params: Mapping[str, Any]) -> Attack:
    """The torchattacks attack ``name`` (any case) with ``params``; ``TypeError`` for a
    parameter it does not accept, :class:`AttackUnavailable` for an unsupported name."""
    return TorchattacksAttack.build(name, params)


class TorchattacksAttack(LibraryAttack):
    """Base of the per-attack classes :func:`build` returns (step_size None by default:
    eps-relative, see the module docstring)."""

    library = "torchattacks"
    supported = SUPPORTED
    single_step = SINGLE_STEP
    randomised = RANDOMISED
    step_keyword = "alpha"
    reserved = ("model", "eps")

    @classmethod
    def library_class_of(cls, name: str) -> type:
        return getattr(torchattacks, name)

    def __init__(self, **params: Any) -> None:
        for key in self.reserved:
            if key in params:
                raise TypeError(
                    f"attack {self.name!r} got parameter {key!r}, which SegAudit sets itself "
                    "(eps comes from the claim's threat model); "
                    f"accepted: {', '.join(self.defaults)}"
                )
        super().__init__(**params)
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
        keywords = self.passed_through()
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

    def prepare(self, images, labels, mask, *, threat, ctx):
        safe = torch.where(mask, labels, torch.zeros_like(labels))
        ignored = None if ctx.ignore_index is None else ~mask
        module = DenseModule(ctx.model, ignored, ctx.on_gradient, device=images.device)
        return lambda: self.library_attack(module, threat.eps.value, images.device)(images, safe)


class DenseModule(CallableModule):
    """``ctx.model`` as torchattacks needs it: ignored pixels masked, mode switches inert.

    The model is never a submodule (see :class:`~audit.attacks.base.CallableModule`), so the
    wrapper's ``parameters()`` and ``.to()`` never reach the user's model; its only parameter
    is an empty, frozen device anchor for torchattacks' device detection.  Each forward pass
    registers a hook on (a view of) its input, so every input gradient the library computes
    reaches ``on_gradient`` (the engine's gradient-health watch).
    """

    def __init__(
        self,
        model: Model,
        ignored: torch.Tensor | None,
        on_gradient: Callable[[torch.Tensor], None],
        *,
        device: torch.device,
    ) -> None:
        super().__init__(model)
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

"""adv-lib's minimal-norm segmentation attacks (``advlib:<attack>``), behind SegAudit's interfaces.

adv-lib 0.2.8 (``adv_lib.attacks.segmentation``) has five attacks that look for the smallest
perturbation flipping a fraction ``adv_threshold`` (default 0.99) of the labelled pixels:

========== ============ ==================================================================
attack     norms        notes
========== ============ ==================================================================
alma_prox  linf         ALMA prox (Rony et al. 2023): proximal step on the Linf norm
dag        linf, l2     DAG (Xie et al. 2017): each step normalised in the norm (``p``);
                        the first iterate that flips enough pixels is kept
pdgd       l2           primal-dual gradient descent, L2 only
pdpgd      linf, l2     primal-dual proximal gradient descent, ``norm`` = inf or 2
asma       l2           ASMA (Ozbulak et al. 2019), run targeted, see below
========== ============ ==================================================================

What the adapter decides, so that every attack behaves like SegAudit's own:

- The model is wrapped in :class:`~audit.attacks.base.CallableModule`: adv-lib sees a module
  without parameters that ignores ``train()``, so the user's model keeps its mode, weights and
  gradients (adv-lib differentiates with ``torch.autograd.grad`` on the perturbation only).
- Labels: adv-lib attacks the pixels whose label is below the number of classes. Pixels with
  the ignore index (255, -100, or 255 in a model with more than 255 classes) are given the
  label ``num_classes``, which it masks, and so are negative labels; with no ignore index
  every other pixel is attacked. ``ctx.on_gradient`` is not called: adv-lib's losses are
  its own, and their zero gradients (already-flipped pixels) are no sign of masking.
- Randomness (``pdgd``/``pdpgd`` with ``random_init``) comes from the global RNG of the images'
  device, forked and seeded from an integer drawn from ``ctx.generator``: runs are
  reproducible and the caller's global RNG state is unchanged.
- ``steps`` (SegAudit's common parameter) is the library's ``num_steps`` (``max_iter`` for
  DAG). Every other keyword of the library function is passed through verbatim; Greek names
  may also be spelled in ASCII (``gamma`` for ``γ``, ``scale_gamma`` for ``scale_γ``,
  ``epsilon_threshold`` for ``ε_threshold``). ``model``, ``inputs``, ``labels``, ``masks``,
  ``targeted``, ``callback`` and the norm selector (DAG's ``p``, PDPGD's ``norm``) are set by
  the adapter; naming one, or any other unknown key, is a ``TypeError``.
- DAG's step ``γ`` = 0.5 was meant for 0-255 inputs. On [0, 1] images the adapter defaults it
  to 1e-3 per step in Linf (about 0.25/255, half the original step), and in L2 to the L2 length
  of such a step spread over the whole image, 1e-3 * sqrt(C*H*W); ``gamma`` overrides both.
- ASMA's loss raises the logit of its ``labels`` where the prediction differs from them:
  untargeted (labels = truth) it never moves away from the clean image. The adapter runs it
  targeted, towards each labelled pixel's runner-up class of the clean logits (the largest
  logit other than the label's), and a pixel counts as flipped only when it reaches that
  class: its radii are upper bounds, like every attack's, but looser.
- ``torch.compile``: alma_prox's Linf prox is decorated with ``torch.compile``. Compiling it
  costs about 40 s per process on CPU (23 s on an H100), again for new input shapes, and
  buys nothing: the compiled prox breaks its graph on ``Tensor.item()``; warm, it ran
  slower than eager on CPU (tiny images) and no faster on an H100 (1.7 s against 1.6 s for
  100 steps on 4 x 3 x 512 x 512). The adapter therefore runs every attack under
  ``torch.compiler.set_stance("force_eager")`` (the model too, should it be a
  ``torch.compile`` module); ``compile = true`` leaves the compiler alone.
- Failure: every attack returns its best iterate, except DAG, which returns the clean image
  when no iterate flips ``adv_threshold`` of the pixels (too few ``steps`` or too small a
  ``gamma``): an attack that found nothing, not a robust model.

A fixed-budget variant (:func:`build`) runs the minimal-norm attack and brings its result into
the epsilon ball with :func:`audit.attacks.base.project`. For L2 this rescales the perturbation,
a true projection that keeps its direction. For Linf it clamps each coordinate: also the
Euclidean projection onto the cube, but it changes the perturbation's direction, so it is
weaker than an attack that optimises at that budget (PGD, ``torchattacks:PGD``); use it for
comparisons, not as the strongest attack.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from adv_lib.attacks.segmentation import alma_prox, asma, dag, pdgd, pdpgd

from audit.attacks.adapters._common import seeded_global_rng
from audit.attacks.base import Attack, AttackContext, CallableModule, MinNormAttack
from audit.errors import AttackUnavailable
from audit.metrics import predict
from audit.threat import ThreatModel

#: norm as SegAudit names it -> the value adv-lib's ``p`` / ``norm`` arguments take
_P: dict[str, float] = {"linf": float("inf"), "l2": 2.0}

#: keyword arguments the adapter itself fills in, for every attack
_RESERVED: frozenset[str] = frozenset(
    {"model", "inputs", "labels", "masks", "targeted", "callback"}
)

#: ASCII spellings of the Greek letters in adv-lib's parameter names
_GREEK: dict[str, str] = {
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "epsilon",
    "λ": "lambda",
    "μ": "mu",
    "ξ": "xi",
    "ρ": "rho",
    "τ": "tau",
}

#: DAG's step per iteration in Linf on [0, 1] images (its 0.5 was meant for 0-255)
DAG_LINF_STEP = 1e-3


@dataclass(frozen=True)
class _Spec:
    function: Callable[..., torch.Tensor]
    norms: tuple[str, ...]
    steps_key: str
    #: the argument selecting the norm (``p`` for DAG, ``norm`` for PDPGD), if any
    norm_key: str | None = None
    #: run targeted towards the clean runner-up class (ASMA)
    runner_up: bool = False
    #: adapter defaults replacing the library's
    overrides: Mapping[str, Any] = field(default_factory=dict)


_SPECS: dict[str, _Spec] = {
    "alma_prox": _Spec(alma_prox, ("linf",), "num_steps"),
    # γ None: DAG_LINF_STEP in Linf, its L2 equivalent over the image in L2 (see run)
    "dag": _Spec(dag, ("linf", "l2"), "max_iter", norm_key="p", overrides={"γ": None}),
    "pdgd": _Spec(pdgd, ("l2",), "num_steps"),
    "pdpgd": _Spec(pdpgd, ("linf", "l2"), "num_steps", norm_key="norm"),
    "asma": _Spec(asma, ("l2",), "num_steps", runner_up=True),
}

#: attack name -> the norms it minimises
SUPPORTED: dict[str, tuple[str, ...]] = {name: spec.norms for name, spec in _SPECS.items()}


def _ascii(name: str) -> str:
    return "".join(_GREEK.get(char, char) for char in name)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _spec(attack: str) -> tuple[str, _Spec]:
    key = attack.lower()
    if key not in _SPECS:
        raise AttackUnavailable(
            f"adv-lib has no segmentation attack {attack!r}; supported: "
            + ", ".join(f"advlib:{name} ({'/'.join(norms)})" for name, norms in SUPPORTED.items())
        )
    return key, _SPECS[key]


def _resolve(attack: str, spec: _Spec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The library keyword arguments for ``params``, defaults filled in (scalars only).

    Callable defaults (ALMA's ``penalty``) are left to the library unless given, so that
    ``params`` stays a plain, reproducible mapping (the engine hashes it into cache keys).
    """
    signature = inspect.signature(spec.function).parameters
    reserved = _RESERVED | ({spec.norm_key} if spec.norm_key else set())
    settable = [name for name in signature if name not in reserved]
    spelling = {name: name for name in settable} | {_ascii(name): name for name in settable}
    spelling["steps"] = spec.steps_key
    spelling["compile"] = "compile"  # the adapter's own: see the module docstring

    resolved: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in params.items():
        if key in reserved:
            raise TypeError(
                f"attack 'advlib:{attack}' sets {key!r} itself (from the norm, the labels "
                "and the context); remove it from the parameters"
            )
        target = spelling.get(key)
        if target is None:
            accepted = ["steps", "compile"] + [
                name if _ascii(name) == name else f"{name} ({_ascii(name)})" for name in settable
            ]
            raise TypeError(
                f"attack 'advlib:{attack}' got unknown parameter {key!r}; "
                f"accepted: {', '.join(accepted)}"
            )
        if target in given_as:
            raise TypeError(
                f"attack 'advlib:{attack}' got {given_as[target]!r} and {key!r}, "
                f"which both set {target!r}; give one"
            )
        given_as[target] = key
        resolved[target] = value

    defaults = {
        name: signature[name].default
        for name in settable
        if signature[name].default is not inspect.Parameter.empty
    }
    defaults.update(spec.overrides)
    defaults["compile"] = False
    if not isinstance(resolved.get("compile", False), bool):
        raise TypeError(f"attack 'advlib:{attack}': 'compile' must be true or false")
    filled = {k: v for k, v in defaults.items() if k not in resolved and _scalar(v)}
    return {**filled, **resolved}


def library_labels(
    labels: torch.Tensor, ignore_index: int | None, num_classes: int
) -> torch.Tensor:
    """``labels`` as adv-lib wants them: int64, ignored pixels set to ``num_classes``.

    adv-lib attacks the pixels whose label is below the number of classes, so the ignore
    index must end up at or above it: 255 already does for fewer than 256 classes, but not
    for more, and -100 never does.  Other negative labels are not attacked either (adv-lib
    would index with them); labels at or above ``num_classes`` are left for adv-lib to mask.
    """
    labels = labels.long()
    outside = labels < 0  # never a class; adv-lib would index with it
    if ignore_index is not None:
        outside |= labels == ignore_index
    return labels.masked_fill(outside, num_classes)


def _runner_up(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each labelled pixel's largest-logit class other than its label; ignored stay ignored."""
    labelled = labels < num_classes
    safe = torch.where(labelled, labels, torch.zeros_like(labels))
    others = logits.detach().scatter(1, safe.unsqueeze(1), float("-inf"))
    return torch.where(labelled, predict(others), labels)


def _channels_last(
    model: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` with its N x K x H x W logits laid out channels-last on CPU.

    adv-lib takes the argmax over the class axis at every step; on contiguous logits that
    reduction is strided, and torch's CPU kernel for it is about nine times slower than over
    channels-last memory (44 ms against 5 ms for 8 x 8 x 128 x 256, a quarter of a PD-PGD
    step on the demo).  Only the layout changes: the same values and shape, so the attack's
    path is the same bit for bit (tested).
    """

    def forward(images: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        if logits.dim() == 4 and logits.device.type == "cpu":
            return logits.contiguous(memory_format=torch.channels_last)
        return logits

    return forward


class AdvLibMinNormAttack(MinNormAttack):
    """One adv-lib segmentation attack; subclasses (made by :func:`build_min_norm`) name it."""

    family: ClassVar[str] = "min_norm"
    library: ClassVar[str] = "advlib"
    attack: ClassVar[str]
    spec: ClassVar[_Spec]

    def __init__(self, **params: Any) -> None:
        self.params = _resolve(self.attack, self.spec, params)

    def run(
        self, images: torch.Tensor, labels: torch.Tensor, *, norm: str, ctx: AttackContext
    ) -> torch.Tensor:
        spec = self.spec
        if self.attack == "alma_prox" and ctx.num_classes < 3:
            raise AttackUnavailable(
                f"attack {self.name!r} needs at least 3 classes (its loss uses the top-3 "
                f"logits); the model has {ctx.num_classes}"
            )
        kwargs = {k: v for k, v in self.params.items() if k != "compile"}
        if spec.norm_key is not None:
            kwargs[spec.norm_key] = _P[norm]
        if self.attack == "dag" and kwargs.get("γ") is None:
            size = images[0].numel() if norm == "l2" else 1
            kwargs["γ"] = DAG_LINF_STEP * math.sqrt(size)
        targets = library_labels(labels, ctx.ignore_index, ctx.num_classes).to(images.device)
        module = CallableModule(_channels_last(ctx.model))
        if spec.runner_up:
            with torch.no_grad():
                logits = module(images)
            targets = _runner_up(logits, targets, ctx.num_classes)
            kwargs["targeted"] = True
        stance = (
            contextlib.nullcontext()
            if self.params["compile"]
            else torch.compiler.set_stance("force_eager")
        )
        with seeded_global_rng(ctx.generator, images.device), stance:
            adv = spec.function(module, images, targets, **kwargs)
        return adv.detach()


class AdvLibAttack(Attack):
    """An adv-lib minimal-norm attack used at a fixed budget.

    It runs the minimal-norm attack in the threat model's norm and returns its result; the
    base class projects it onto the ball (L2: rescaling; Linf: clamping, which is weaker than
    a budgeted attack, see the module docstring) and into [0, 1].  The result does not
    depend on epsilon, so :meth:`grid` runs the attack once per norm for a whole sweep.
    """

    family: ClassVar[str] = "min_norm"
    library: ClassVar[str] = "advlib"
    shares_grid: ClassVar[bool] = True
    min_norm: ClassVar[type[AdvLibMinNormAttack]]

    def __init__(self, **params: Any) -> None:
        self.inner = self.min_norm(**params)
        self.params = self.inner.params

    def run(self, images, labels, *, threat, ctx):
        return self.inner.run(images, labels, norm=threat.norm, ctx=ctx)

    def grid(self, images, labels, threats, ctx):
        """Each threat's projection of one minimal-norm run per norm (the first threat of a
        norm gets exactly what calling the attack at it alone would give)."""
        unbounded: dict[str, torch.Tensor] = {}

        def once(threat: ThreatModel) -> Callable[[torch.Tensor], torch.Tensor]:
            def attack(x: torch.Tensor) -> torch.Tensor:
                if threat.norm not in unbounded:
                    unbounded[threat.norm] = self.run(x, labels, threat=threat, ctx=ctx).detach()
                return unbounded[threat.norm]

            return attack

        return [self.within(threat, images, once(threat)) for threat in threats]


def _classes(attack: str) -> tuple[type[AdvLibMinNormAttack], type[AdvLibAttack]]:
    key, spec = _spec(attack)
    suffix = "".join(part.title() for part in key.split("_"))
    attrs = {
        "name": f"advlib:{key}",
        "norms": spec.norms,
        "attack": key,
        "spec": spec,
        "defaults": _resolve(key, spec, {}),
    }
    min_norm = type(f"AdvLib{suffix}MinNorm", (AdvLibMinNormAttack,), dict(attrs))
    budget = type(f"AdvLib{suffix}", (AdvLibAttack,), {**attrs, "min_norm": min_norm})
    return min_norm, budget


def build_min_norm(name: str, params: Mapping[str, Any]) -> MinNormAttack:
    """``advlib:<name>`` as a minimal-norm attack.

    ``AttackUnavailable`` for an unknown name (the message lists the supported ones),
    ``TypeError`` for a parameter the attack does not take.
    """
    return _classes(name)[0](**params)


def build(name: str, params: Mapping[str, Any]) -> Attack:
    """``advlib:<name>`` at a fixed budget: the minimal-norm result projected onto the ball."""
    return _classes(name)[1](**params)

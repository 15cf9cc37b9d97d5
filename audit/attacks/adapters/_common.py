"""What every adapter shares: reproducible global randomness, parameter checks, and
:class:`LibraryAttack`, the base of the fixed-budget adapters (torchattacks, foolbox).

:class:`LibraryAttack` does the shared work once, as :class:`~audit.attacks.base.Attack` does
for every attack (foolbox 3's pattern): a class per supported library attack, SegAudit's
common parameter names over the library's keywords, images without a labelled pixel left
alone, torch's global RNG forked and seeded from ``ctx.generator``, non-finite outputs
replaced by the input, and restarts that keep, per image, the run with the lowest pixel
accuracy.  An adapter sets class attributes, names its library's classes
(:meth:`~LibraryAttack.library_class_of`) and implements :meth:`~LibraryAttack.prepare`: the
library set up for one batch, as a function that runs its attack once.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, ClassVar

import torch

from audit.attacks import COMMON_PARAMS, losses
from audit.attacks.base import Attack, AttackContext, worst_of_restarts
from audit.errors import AttackUnavailable
from audit.threat import ThreatModel


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded from ``generator``, then restore it.

    Libraries draw random starts from the global RNG; forking it keeps runs reproducible for a
    seed without disturbing the caller's random state.  Only the RNGs of the CPU and of
    ``device`` are forked and seeded.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(device_type=device.type):
            torch.manual_seed(seed)
            yield


def check_counts(name: str, params: Mapping[str, Any]) -> None:
    for key in ("steps", "restarts"):
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"attack {name!r}: {key} must be a positive integer, got {value!r}")
    step = params.get("step_size")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)):
        raise ValueError(f"attack {name!r}: step_size must be a number, got {step!r}")


class LibraryAttack(Attack):
    """Base of the adapters that run a library's fixed-budget attack (see the module
    docstring).  :meth:`build` makes the attacks; a subclass sets the class attributes
    below, implements :meth:`library_class_of` and :meth:`prepare`, and may override
    :meth:`inputs`."""

    #: the library's attacks that work on dense outputs -> their norm
    supported: ClassVar[Mapping[str, str]]
    #: other names of supported attacks -> the name in :attr:`supported`
    aliases: ClassVar[Mapping[str, str]] = {}
    #: the attacks that take one gradient step (the rest are iterative)
    single_step: ClassVar[frozenset[str]]
    #: the attacks that may restart; None: those with a ``random_start`` keyword
    randomised: ClassVar[frozenset[str] | None] = None
    #: the library's keyword for ``step_size``, accepted as its synonym
    step_keyword: ClassVar[str]
    #: the library's keyword for a step relative to eps, which an absolute step excludes
    relative_step: ClassVar[str | None] = None
    #: the library's constructor keywords the adapter sets itself
    reserved: ClassVar[tuple[str, ...]] = ()
    #: set per attack by :meth:`build`: the name in :attr:`supported`, the library's class
    library_name: ClassVar[str]
    library_class: ClassVar[type]

    @classmethod
    def build(cls, name: str, params: Mapping[str, Any]) -> Attack:
        """The library's attack ``name`` (any case, aliases too) with ``params``;
        ``TypeError`` for a parameter it does not accept, :class:`AttackUnavailable` for an
        unsupported name."""
        by_lower = {n.lower(): n for n in cls.supported}
        by_lower.update({alias.lower(): target for alias, target in cls.aliases.items()})
        if name.lower() not in by_lower:
            aliases = f" (aliases: {', '.join(cls.aliases)})" if cls.aliases else ""
            raise AttackUnavailable(
                f"{cls.library} attack {name!r} is not supported on segmentation outputs; "
                f"supported: {', '.join(cls.supported)}{aliases}"
            )
        return _attack_class(cls, by_lower[name.lower()])(**dict(params))

    @classmethod
    @abstractmethod
    def library_class_of(cls, name: str) -> type:
        """The class the adapter runs for the supported attack ``name``."""

    def __init__(self, **params: Any) -> None:
        if self.step_keyword in params and "step_size" in self.defaults:
            if "step_size" in params:
                raise TypeError(
                    f"attack {self.name!r} got both 'step_size' and its synonym "
                    f"{self.step_keyword!r}; give one"
                )
            params["step_size"] = params.pop(self.step_keyword)
        relative = self.relative_step
        if relative is not None and relative in params and params.get("step_size") is not None:
            raise TypeError(
                f"attack {self.name!r} got both an absolute 'step_size' and {relative!r}; give one"
            )
        super().__init__(**params)
        check_counts(self.name, self.params)

    def passed_through(self) -> dict[str, Any]:
        """The parameters that go verbatim to the library (all but the common names)."""
        return {k: v for k, v in self.params.items() if k not in COMMON_PARAMS}

    def run(self, images, labels, *, threat, ctx):
        mask = losses.labelled(labels, ctx.ignore_index)
        keep = mask.flatten(1).any(1)
        adv = images.clone()
        if not bool(keep.any()):
            return adv
        x, y, m = self.inputs(images[keep]), labels[keep], mask[keep]
        once = self.prepare(x, y, m, threat=threat, ctx=ctx)

        def attempt() -> torch.Tensor:
            out = once().detach()
            return torch.where(torch.isfinite(out), out, x)

        restarts = int(self.params.get("restarts", 1))
        with seeded_global_rng(ctx.generator, images.device):
            best = worst_of_restarts(restarts, attempt, ctx.model, y, m)
        adv[keep] = best.to(adv.dtype)
        return adv

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The images as the library gets them (the ones with labelled pixels)."""
        return images

    @abstractmethod
    def prepare(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        *,
        threat: ThreatModel,
        ctx: AttackContext,
    ) -> Callable[[], torch.Tensor]:
        """The library set up for one batch (``mask``: the labelled pixels), as a function
        that runs its attack once on ``images`` and returns the result; each call is one
        restart, run under the seeded global RNG."""


@cache
def _attack_class(base: type[LibraryAttack], name: str) -> type[LibraryAttack]:
    """A subclass of ``base`` per attack, so ``name``, ``norms``, ``family`` and ``defaults``
    are class attributes, as for every other attack."""
    library_class = base.library_class_of(name)
    randomised = None if base.randomised is None else name in base.randomised
    return type(
        f"{base.library.title()}{name}",
        (base,),
        {
            "name": f"{base.library}:{name}",
            "norms": (base.supported[name],),
            "family": "single_step" if name in base.single_step else "iterative",
            "library_name": name,
            "library_class": library_class,
            "defaults": _defaults(base, library_class, randomised),
        },
    )


def _defaults(
    base: type[LibraryAttack], library_class: type, randomised: bool | None
) -> dict[str, Any]:
    """SegAudit's common names first (``steps``; ``step_size`` for the library's step
    keyword, default None: a step relative to eps; ``random_start``; ``restarts`` = 1 where
    the attack may restart), then the library's other keyword parameters, less the ones the
    adapter sets itself, with the library's defaults."""
    rest = {
        p.name: p.default
        for p in inspect.signature(library_class.__init__).parameters.values()
        if p.name != "self"
        and p.name not in base.reserved
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if randomised is None:
        randomised = "random_start" in rest
    out: dict[str, Any] = {}
    if "steps" in rest:
        out["steps"] = rest.pop("steps")
    if base.step_keyword in rest:
        rest.pop(base.step_keyword)
        out["step_size"] = None
    if "random_start" in rest:
        out["random_start"] = rest.pop("random_start")
    if randomised:
        out["restarts"] = 1
    out.update(rest)
    return out

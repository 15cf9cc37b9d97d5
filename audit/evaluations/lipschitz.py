"""Where the Lipschitz constant L of certificates comes from, and why it can be trusted.

In order of trust: a bound the harness proves from the weights (``computed``), or a
constant the model or the suite claims (``claimed``), which a falsification search tests
first: a pair of inputs whose outputs are further apart than L allows refutes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from audit.certify.falsify import lipschitz_lower_bound
from audit.certify.lipschitz import UnsupportedLayer, lipschitz_bound
from audit.certify.margins import full_float32
from audit.errors import ConfigError, EvaluationError, ModelError

if TYPE_CHECKING:
    from audit.engine import Engine

#: relative safety factor against rounding (reference section 3)
KAPPA = 1e-3
#: the falsification search of a claimed constant: images it starts from, power-iteration
#: and gradient-ascent steps (each a forward and a backward pass on those images); enough to
#: expose a constant off by a factor, which is what it is for
FALSIFY_IMAGES = 2
FALSIFY_POWER_STEPS = 10
FALSIFY_ASCENT_STEPS = 15


class LipschitzFalsified(EvaluationError):
    """A claimed Lipschitz constant is contradicted by a pair of inputs."""

    def __init__(self, message: str, lower: Any) -> None:
        super().__init__(message)
        self.lower = lower


@dataclass(frozen=True)
class LipschitzSource:
    """The constant certificates use, and why it can be trusted."""

    value: float
    #: "computed" (a bound from the weights) or "claimed" (metadata or suite; tested)
    kind: str
    description: str
    bound: Any = None  # audit.certify.lipschitz.LipschitzBound
    lower: Any = None  # audit.certify.falsify.LowerBound

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "kind": self.kind,
            "description": self.description,
            "bound": self.bound.to_dict() if self.bound is not None else None,
            "lower_bound": self.lower.value if self.lower is not None else None,
        }


def computed_bound(engine: Engine) -> Any:
    """The provable bound of the audited function (wrapper included), computed once."""
    return engine.cached(
        engine.key_parts("lipschitz_bound"), lambda: lipschitz_bound(engine.module)
    )


def lower_bound(engine: Engine) -> Any:
    """The falsification search's best lower bound of the true constant, computed once."""

    def compute() -> Any:
        images = next(iter(engine.batches())).images[:FALSIFY_IMAGES]
        generator = torch.Generator(device=engine.device).manual_seed(engine.seed)
        # The module itself, not a counted callable: the search evaluates a float64 copy when
        # it can, because at large resolutions float32 rounding in ||f(x) - f(y)|| is of the
        # order of the margin between a true constant and its bound.
        model = engine.module
        with full_float32():
            return lipschitz_lower_bound(
                model,
                images,
                generator=generator,
                power_steps=FALSIFY_POWER_STEPS,
                ascent_steps=FALSIFY_ASCENT_STEPS,
                tick=engine.check_deadline,
            )

    return engine.cached(engine.key_parts("lipschitz_lower_bound"), compute)


def claimed_constant(engine: Engine, source: Any) -> tuple[float, str]:
    if isinstance(source, float):
        return source, "stated in the claim"
    metadata = engine.model.metadata
    if metadata.lipschitz is None:
        raise ConfigError(
            "no claimed Lipschitz constant: the model's metadata has no 'lipschitz'; give one "
            "in the suite's [model] table, with --audit-metadata, or as lipschitz = <number>",
            key="lipschitz",
        )
    where = metadata.lipschitz_source or "the model's metadata"
    return float(metadata.lipschitz), f"claimed in {where}"


def resolve_lipschitz(engine: Engine, source: Any, *, falsify: bool = True) -> LipschitzSource:
    """L for certificates: ``computed``, ``claimed`` (or a number), or ``auto``.

    A claimed constant is a hypothesis: the falsification search must not find a pair of
    inputs whose output distance exceeds it, or every certificate built on it is refused.
    """
    if source in ("computed", "auto"):
        try:
            bound = computed_bound(engine)
            return LipschitzSource(
                bound.value, "computed", f"bound from the weights ({bound.method})", bound
            )
        except UnsupportedLayer as exc:
            if source == "computed":
                raise
            reason = str(exc)
        claimed, where = claimed_constant_or_reason(engine, reason)
    else:
        claimed, where = claimed_constant(engine, source)
    lower = lower_bound(engine)
    if falsify and lower.value > claimed * (1 + KAPPA):
        raise LipschitzFalsified(
            f"the claimed Lipschitz constant {claimed:g} ({where}) is false: two inputs "
            f"{float((lower.x - lower.y).norm()):.3g} apart (L2) give logits "
            f"{lower.value:.4g} times as far apart ({lower.method}); no certificate can use it",
            lower,
        )
    verdict = (
        "contradicted by a search"
        if lower.value > claimed * (1 + KAPPA)
        else "not contradicted by a search"
    )
    return LipschitzSource(
        claimed,
        "claimed",
        f"{where}; {verdict} (best lower bound {lower.value:.4g})",
        None,
        lower,
    )


def claimed_constant_or_reason(engine: Engine, reason: str) -> tuple[float, str]:
    try:
        return claimed_constant(engine, "claimed")
    except ConfigError:
        raise ModelError(
            f"no Lipschitz constant for certificates: {reason}; and the model claims none"
        ) from None

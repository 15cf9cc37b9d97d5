"""``kind = "lipschitz"``: the model is at most L-Lipschitz from L2 (image) to L2 (logits).

Three honest outcomes, never a pass on trust:

- **proven**: the upper bound the harness computes from the weights is at most ``max``: the
  claim passes, with the bound as its measured value;
- **refuted**: the falsification search found two inputs whose logits are further apart than
  ``max`` allows: the claim fails, with that lower bound as its measured value and the pair
  saved as evidence;
- **not decided**: no bound (a layer the harness cannot bound) or a bound above ``max``, and
  no refuting pair: an error that says which, with both numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from audit.certify.lipschitz import UnsupportedLayer
from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where
from audit.errors import EvaluationError
from audit.evaluations.lipschitz import computed_bound, lower_bound

if TYPE_CHECKING:
    from audit.engine import Engine


@register
class LipschitzClaim(ClaimKind):
    name = "lipschitz"
    value_range = None
    keys: ClassVar[Mapping[str, str]] = {
        "norm": "'l2' (the only norm bounds are computed for; default l2)",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        if raw.get("norm", "l2") != "l2":
            raise where.error(f"only 'l2' is supported, got {raw['norm']!r}", key="norm")
        if "max" not in raw or "min" in raw:
            raise where.error(
                "give the claimed constant as 'max' (the model is at most max-Lipschitz)",
                key="max",
            )
        return {"norm": "l2", "metric": "lipschitz_upper_bound"}

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        return measure_lipschitz(spec, engine)


def measure_lipschitz(spec: ClaimSpec, engine: Engine) -> Measurement:
    """Proven (the bound), refuted (the search's lower bound, with its pair), or an error
    saying the claim is not decided."""
    claimed = spec.threshold.max
    try:
        bound = computed_bound(engine)
        unbounded = ""
    except UnsupportedLayer as exc:
        bound, unbounded = None, str(exc)
    if bound is not None and (claimed is None or bound.value <= claimed):
        return Measurement(
            value=bound.value,
            quantity="upper bound of the L2 Lipschitz constant",
            condition=f"computed from the weights ({bound.method})",
            num_samples=0,
            evidence={"bound": bound.to_dict()},
        )
    lower = lower_bound(engine)
    evidence: dict[str, Any] = {
        "bound": bound.to_dict() if bound is not None else None,
        "lower_bound": lower.value,
        "lower_bound_method": lower.method,
    }
    if claimed is not None and lower.value > claimed:
        distance = float((lower.x - lower.y).norm())
        return Measurement(
            value=lower.value,
            quantity="lower bound of the L2 Lipschitz constant",
            condition=f"shown by two inputs {distance:.3g} apart whose logits are "
            f"{lower.value:.4g} times as far apart ({lower.method}; the pair is saved)",
            num_samples=0,
            evidence=evidence,
            artifacts={"x": lower.x.cpu().numpy(), "y": lower.y.cpu().numpy()},
        )
    unproven = (
        f"no upper bound can be computed ({unbounded})"
        if bound is None
        else f"the bound computed from the weights is {bound.value:.4g} ({bound.method}), "
        f"above the claimed {claimed:g}"
    )
    raise EvaluationError(
        f"the claim is not decided: {unproven}; and the falsification search found no pair "
        f"of inputs that refutes it (best ratio {lower.value:.4g}, {lower.method}). A "
        "Lipschitz claim passes only on proof"
    )

"""``kind = "lipschitz"``: the model is at most L-Lipschitz from L2 (image) to L2 (logits).

It passes only on proof: the upper bound the harness computes from the weights must be at
most ``max``.  When no bound can be computed (a layer it does not understand) the claim fails
with the reason, and with the best lower bound a falsification search found, instead of
passing on trust.  The search also runs when the bound exceeds the claim, to show whether the
claim is false or only unproven.
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
    """The proven upper bound of the constant; without one, an error saying what the
    falsification search found (the claim is never taken on trust)."""
    claimed = spec.threshold.max
    try:
        bound = computed_bound(engine)
    except UnsupportedLayer as exc:
        lower = lower_bound(engine)
        verdict = (
            f"which exceeds the claimed {claimed:g}: the claim is false"
            if claimed is not None and lower.value > claimed
            else "which does not contradict the claim, but proves nothing either"
        )
        raise EvaluationError(
            f"no upper bound can be computed, so the claim is not proven: {exc}. The "
            f"falsification search found a pair of inputs with ratio {lower.value:.4g} "
            f"({lower.method}), {verdict}"
        ) from None
    evidence: dict[str, Any] = {"bound": bound.to_dict()}
    artifacts: dict[str, Any] = {}
    if claimed is not None and bound.value > claimed:
        lower = lower_bound(engine)
        evidence["lower_bound"] = lower.value
        evidence["lower_bound_method"] = lower.method
        if lower.value > claimed:
            artifacts = {"x": lower.x.cpu().numpy(), "y": lower.y.cpu().numpy()}
    return Measurement(
        value=bound.value,
        quantity="upper bound of the L2 Lipschitz constant",
        condition=f"computed from the weights ({bound.method})",
        num_samples=0,
        evidence=evidence,
        artifacts=artifacts,
    )

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

from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where

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
        from audit.certification import measure_lipschitz

        return measure_lipschitz(spec, engine)

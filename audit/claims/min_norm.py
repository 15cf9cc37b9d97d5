"""``kind = "min_norm"``: how large a perturbation a minimal-norm attack needs.

The attack (adv-lib's alma_prox, dag, pdgd, pdpgd or asma) searches the smallest perturbation
that flips most pixels of each image.  Two radii come out of it:

- ``radius = "image"``: per image, the norm of that perturbation (infinite where the attack
  did not reach its flip threshold: it found no adversarial example, so none is counted);
- ``radius = "pixel"`` (default): per labelled pixel, the smallest point on the straight path
  from the image to the attack's result at which the pixel's prediction changes (zero for a
  pixel the model already gets wrong).  It is an upper bound of each pixel's true minimal
  radius: what the attack proves reachable, the number to hold against certified radii.

The claim compares a quantile (default the median) with ``min``/``max``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from audit.attacks import build_min_norm_attack, check_name, library_of
from audit.claims import register
from audit.claims.attack import parse_attack_params
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Where
from audit.claims.parsing import checked, required, whole_number
from audit.evaluations.min_norm import evaluate_min_norm
from audit.metrics import finite_or_none
from audit.threat import parse_norm

if TYPE_CHECKING:
    from audit.engine import Engine

RADII = ("pixel", "image")
_NORM_MISSING = "missing: a radius needs its norm; give 'linf' or 'l2'"


def _fraction(raw: Mapping[str, Any], key: str, default: float, where: Where) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise where.error(f"expected a number in (0, 1], got {value!r}", key=key)
    return float(value)


@register
class MinNormClaim(ClaimKind):
    name = "min_norm"
    value_range = None
    keys: ClassVar[Mapping[str, str]] = {
        "attack": "a minimal-norm attack: advlib:alma_prox, advlib:dag, advlib:pdgd, "
        "advlib:pdpgd or advlib:asma",
        "norm": "'linf' or 'l2' (mandatory): the norm the radius is measured in",
        "radius": "'pixel' (default) or 'image'",
        "quantile": "which quantile of the radii is compared (default 0.5, the median)",
        "steps": "the attack's iterations",
        "adv_threshold": "share of pixels the attack must flip (default 0.99)",
        "radius_steps": "points on the path used for per-pixel radii (default 32)",
        "params": "a table of further keyword arguments for the attack",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        attack = checked(check_name, raw.get("attack"), where, "attack")
        if library_of(attack) != "advlib":
            raise where.error(
                f"{attack!r} is not a minimal-norm attack; use advlib:alma_prox, advlib:dag, "
                "advlib:pdgd, advlib:pdpgd or advlib:asma",
                key="attack",
            )
        norm = checked(parse_norm, required(raw, "norm", where, _NORM_MISSING), where, "norm")
        radius = raw.get("radius", "pixel")
        if radius not in RADII:
            raise where.error(f"expected 'pixel' or 'image', got {radius!r}", key="radius")
        steps = whole_number(raw, "radius_steps", where, default=32, low=2)
        params = parse_attack_params(
            {k: v for k, v in raw.items() if k in ("steps", "params")}, attack, norm, where
        )
        return {
            "attack": attack,
            "norm": norm,
            "radius": radius,
            "quantile": _fraction(raw, "quantile", 0.5, where),
            "adv_threshold": _fraction(raw, "adv_threshold", 0.99, where),
            "radius_steps": steps,
            "attack_params": params,
        }

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        p = spec.params
        try:
            # Built first: a parameter it does not take is the claim's error, named, before
            # any work; a TypeError during the run is a bug, and reported as one.
            build_min_norm_attack(p["attack"], p["attack_params"])
        except TypeError as exc:
            raise Where(spec.source, spec.id).error(str(exc), key="params") from None
        evaluation = evaluate_min_norm(
            engine,
            p["attack"],
            p["attack_params"],
            p["norm"],
            radius_steps=p["radius_steps"],
            adv_threshold=p["adv_threshold"],
        )
        values = (
            evaluation.pixel_radius if p["radius"] == "pixel" else evaluation.image_radius
        ).numpy()
        q = p["quantile"]
        # No interpolation: with radii that are infinite (attack failed) a quantile must be
        # one of the observed values, never inf - inf.
        value = float(np.quantile(values, q, method="inverted_cdf")) if values.size else np.nan
        what = "per-pixel" if p["radius"] == "pixel" else "per-image"
        quantity = f"{'median' if q == 0.5 else f'{q:g}-quantile'} {what} {p['norm']} radius"
        return Measurement(
            value=value,
            quantity=quantity,
            condition=f"found by {p['attack']}",
            num_samples=evaluation.num_samples,
            evidence={
                "evaluation": evaluation.id,
                "attack": evaluation.attack,
                "norm": p["norm"],
                "reached": int(evaluation.reached.sum()),
                "finite_fraction": finite_or_none(float(np.isfinite(values).mean()))
                if values.size
                else None,
            },
        )

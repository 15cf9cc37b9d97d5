"""``kind = "certificate_soundness"``: no attack may beat a certificate.

The listed attacks run at the claimed L2 radius against the model's own clean predictions.
A pixel certified at a radius above the perturbation's norm whose prediction changes is a
violation; so is a certified pixel accuracy above the attacked pixel accuracy at the same
radius.  Minimal-norm attacks also give each pixel an empirical radius, which must not fall
below its certified radius.  A violation fails the item and leaves a reproducible
counterexample (input, perturbation, pixel, margin, L, norm) in the report folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from audit.attacks import check_name
from audit.claims import register
from audit.claims.base import ClaimSpec, Measurement, Threshold, Where
from audit.claims.certified import CertifierKeys, parse_certifier, parse_l2_norm
from audit.claims.certifiers import unproven_constant
from audit.claims.parsing import SweepKind, checked, parse_epsilons, sweep_params, whole_number
from audit.evaluations.soundness import check_soundness

if TYPE_CHECKING:
    from audit.engine import Engine

#: the attack set of the issue: PGD-L2, CosPGD-L2, a minimal-norm attack, a random search
DEFAULT_ATTACKS = ("pgd", "cospgd", "advlib:pdpgd", "search")
#: the attacks' budgets, by key, with their defaults.  Measured on the demo (4 images,
#: radius 0.1; docs/claims.md): PGD and CosPGD use 1.02% of the margin drop the certificate
#: allows after 10 steps and 1.03% after 50, so 20 leaves room; PD-PGD finds no pixel's
#: radius within 100 steps and finds them at 200, which every radius of a sweep shares
BUDGETS = {"steps": 20, "min_norm_steps": 200, "search_examples": 40}


@register
class CertificateSoundnessClaim(SweepKind):
    name = "certificate_soundness"
    value_range = None
    #: the measured value is the number of violations: any one fails the claim
    default_threshold = Threshold(max=0.0)
    keys: ClassVar[Mapping[str, str]] = CertifierKeys(
        {
            "norm": "'l2' (mandatory)",
            "eps": "the L2 radius the attacks get, or a list (one item each)",
            "attacks": "attacks to run: L2 attacks by name (pgd, cospgd, segpgd, "
            "torchattacks:PGDL2, foolbox:L2PGD, advlib:<min-norm attack>) and 'search' "
            f"(a hypothesis search over directions); default {list(DEFAULT_ATTACKS)}",
            "steps": "iterations of the gradient attacks (default 20)",
            "min_norm_steps": "iterations of the minimal-norm attacks (default 200)",
            "search_examples": "directions the hypothesis search tries (default 40)",
        }
    )

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        if raw.get("certifier") == "smoothing":
            # Refused before its own keys are read: no value of them would make it testable.
            raise where.error(
                "soundness checks attack the Lipschitz certificate; a smoothing certificate "
                "is a probabilistic statement about the smoothed classifier, which attacks on "
                "the base model do not test. Use certifier = 'lipschitz' (the default) here, "
                "and a kind = 'certified' claim with certifier = 'smoothing' for the smoothed "
                "classifier's certified metrics",
                key="certifier",
            )
        certifier = parse_certifier(raw, where)
        norm = parse_l2_norm(raw, where)
        radii = parse_epsilons(raw, where, norm=norm, what="radius")
        attacks = raw.get("attacks", list(DEFAULT_ATTACKS))
        if not isinstance(attacks, list) or not attacks:
            raise where.error("expected a non-empty list of attack names", key="attacks")
        names = [
            attack if attack == "search" else checked(check_name, attack, where, "attacks")
            for attack in attacks
        ]
        counts = {key: whole_number(raw, key, where, default=n) for key, n in BUDGETS.items()}
        return {
            **certifier,
            **sweep_params(norm, radii),
            "attacks": names,
            **counts,
            "metric": "violations",
        }

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        return measure_soundness(spec, engine)


def measure_soundness(spec: ClaimSpec, engine: Engine) -> Measurement:
    """Violations found by the soundness check, worded with the attacks' counts and the
    first counterexample."""
    result = check_soundness(engine, spec.params)
    checks = [c.to_dict() for c in result.checks]
    evidence: dict[str, Any] = {
        "lipschitz": result.lipschitz.to_dict(),
        "radius": result.eps,
        "checks": checks,
        "counterexample": result.counterexample,
    }
    artifacts = dict(result.artifacts)
    if result.falsified is not None:
        evidence["falsified"] = {
            "lower_bound": result.falsified.value,
            "method": result.falsified.method,
        }
        artifacts["falsifying_x"] = result.falsified.x.cpu().numpy()
        artifacts["falsifying_y"] = result.falsified.y.cpu().numpy()
    parts = []
    for c in result.checks:
        used = c.to_dict()["margin_use_median"]
        parts.append(
            f"{c.attack}: {c.flipped_certified} of {c.certified_pixels} certified pixels "
            f"flipped, {c.metric_violations} images below the certified accuracy"
            + (f", {used:.0%} of the allowed margin drop used (median)" if used else "")
        )
    where = ""
    if result.counterexample:
        ce = result.counterexample
        where = (
            f"; e.g. {ce['attack']} flips pixel {tuple(ce['pixel'])} of {ce['sample']!r} "
            f"(certified radius {ce['certified_radius']:.4g}, margin {ce['margin']:.4g}) with "
            f"a perturbation of L2 norm {ce['perturbation_norm']:.4g}"
        )
    if result.falsified is not None:
        where += f"; and the claimed L is contradicted (lower bound {result.falsified.value:.4g})"
    unproven = unproven_constant(result.lipschitz)
    evidence["proof"] = "conditional" if unproven else "proven"
    return Measurement(
        value=float(result.violations),
        quantity="number of violations",
        condition=f"at L2 radius {spec.params['eps']} with L = {result.lipschitz.value:.4g} "
        f"({result.lipschitz.kind}"
        + (f"; conditional on {unproven}" if unproven else "")
        + f") [{'; '.join(parts)}{where}]",
        num_samples=result.num_samples,
        evidence=evidence,
        artifacts=artifacts,
        unproven=unproven,
    )

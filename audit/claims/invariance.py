"""``kind = "invariance"``: under any perturbation drawn inside a norm ball, predictions hold.

Hypothesis draws perturbations of four shapes (dense, sparse, patch, low-frequency) on the
sphere of radius ``eps`` in ``norm`` (:func:`audit.strategies.perturbations`).  With the
Lipschitz certifier (the default), every pixel certified beyond the perturbation's L2 norm
must keep its prediction: the value is the number of pixels that did not, in the worst
example found, and any one fails the claim (``max = 0`` by default).  With
``certifier = "none"``, the value is the share of pixels that kept their prediction in the
worst example, and ``min`` is required.  A violation is shrunk and saved as a counterexample
(clean input, perturbation, changed pixels) next to the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from audit.claims import register
from audit.claims.base import ClaimKind, ClaimSpec, Measurement, Threshold, Where
from audit.claims.certifiers import LipschitzCertifier, unproven_constant
from audit.claims.corruption import DEFAULT_MAX_EXAMPLES, DEFAULT_SEARCH_IMAGES, hypothesis_db
from audit.claims.parsing import checked, required, whole_number
from audit.evaluations.invariance import search_invariance
from audit.strategies import SHAPES
from audit.threat import epsilon_problem, parse_epsilon, parse_norm

if TYPE_CHECKING:
    from audit.engine import Engine

CERTIFIERS = ("lipschitz", "none")


@register
class InvarianceClaim(ClaimKind):
    name = "invariance"
    value_range = None
    #: with a certifier the value counts violations: any one fails the claim
    default_threshold = Threshold(max=0.0)
    keys: ClassVar[Mapping[str, str]] = {
        "norm": "'linf' or 'l2' (mandatory)",
        "eps": "the radius of the ball the perturbations are drawn on ('4/255', 0.1)",
        "shapes": f"perturbation shapes searched, a list from {list(SHAPES)} (default all)",
        "certifier": "'lipschitz' (default: certified pixels must keep their prediction) or "
        "'none' (a share 'min' of all pixels must)",
        **LipschitzCertifier.keys,
        "max_examples": f"perturbations the search tries (default {DEFAULT_MAX_EXAMPLES})",
        "search_images": "how many of the audited images (the first ones) each perturbation "
        f"is applied to (default {DEFAULT_SEARCH_IMAGES})",
    }

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        norm = checked(
            parse_norm,
            required(raw, "norm", where, "missing: a radius means nothing without its norm"),
            where,
            "norm",
        )
        eps = checked(parse_epsilon, required(raw, "eps", where, "missing"), where, "eps")
        problem = epsilon_problem(norm, eps)
        if problem is not None:
            raise where.error(problem, key="eps")
        shapes = raw.get("shapes", list(SHAPES))
        if not isinstance(shapes, list) or not shapes or any(s not in SHAPES for s in shapes):
            raise where.error(f"expected a non-empty list from {list(SHAPES)}", key="shapes")
        certifier = raw.get("certifier", "lipschitz")
        if certifier not in CERTIFIERS:
            raise where.error(f"expected 'lipschitz' or 'none', got {certifier!r}", "certifier")
        params: dict[str, Any] = {"certifier": certifier}
        if certifier == "lipschitz":
            params.update(LipschitzCertifier.parse(raw, where))
            if "min" in raw:
                raise where.error(
                    "with a certifier the value is the number of certified pixels that "
                    "changed: give max (default 0), or certifier = 'none' with min = a share",
                    key="min",
                )
        else:
            if "lipschitz" in raw:
                raise where.error("only the lipschitz certifier takes this key", "lipschitz")
            if "min" not in raw:
                raise where.error(
                    "missing: without a certifier, give the share of pixels that must keep "
                    "their prediction (e.g. min = 0.99)",
                    key="min",
                )
        return {
            **params,
            "norm": norm,
            "eps": eps.text,
            "shapes": list(shapes),
            "max_examples": whole_number(raw, "max_examples", where, default=DEFAULT_MAX_EXAMPLES),
            "search_images": whole_number(
                raw, "search_images", where, default=DEFAULT_SEARCH_IMAGES
            ),
            "metric": "violations" if certifier == "lipschitz" else "prediction_kept",
        }

    @classmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        p = spec.params
        result = search_invariance(
            engine,
            {
                "certifier": p["certifier"],
                "lipschitz": p.get("lipschitz"),
                "norm": p["norm"],
                "eps": parse_epsilon(p["eps"]).value,
                "shapes": list(p["shapes"]),
                "max_examples": p["max_examples"],
                "images": p["search_images"],
                "min": spec.threshold.min,
                "max": spec.threshold.max,
                "key": spec.nodeid,
                "database": hypothesis_db(engine),
            },
        )
        certified = p["certifier"] == "lipschitz"
        worst = result.worst
        value = worst["value"] if worst is not None else float("nan")
        found = ""
        if result.shrunk is not None:
            s = result.shrunk
            what = "certified pixels changed" if certified else "of the pixels kept"
            shown = f"{s['value']:.0f}" if certified else f"{s['value']:.3f}"
            found = (
                f"; shrunk counterexample: {s['describe']}: {shown} {what} (worst image "
                f"{s['worst_image']!r})"
            )
        unproven = unproven_constant(result.lipschitz) if result.lipschitz else None
        lipschitz = ""
        if result.lipschitz is not None:
            lipschitz = f", L = {result.lipschitz.value:.4g} ({result.lipschitz.kind})"
            if unproven:
                lipschitz += f"; conditional on {unproven}"
        evidence: dict[str, Any] = {
            "search": {
                "examples": result.examples,
                "first_example": result.first,
                "worst": result.worst,
                "shrunk": result.shrunk,
                "database": hypothesis_db(engine),
                "forward_passes": result.forward_passes,
                "seconds": round(result.seconds, 3),
            },
            "certified_pixels": result.certified_pixels if certified else None,
            "pixels": result.pixels,
        }
        if result.lipschitz is not None:
            evidence["lipschitz"] = result.lipschitz.to_dict()
            evidence["proof"] = "conditional" if unproven else "proven"
        if result.shrunk is not None:
            evidence["counterexample"] = result.shrunk
        return Measurement(
            value=value,
            quantity="certified pixels whose prediction changed"
            if certified
            else "share of pixels that kept their prediction",
            condition=f"under the worst of {result.examples} perturbations ("
            f"{', '.join(p['shapes'])}) on the {p['norm']} sphere of radius {p['eps']}"
            f"{lipschitz}{found}",
            num_samples=result.num_samples,
            evidence=evidence,
            artifacts=dict(result.artifacts),
            unproven=unproven,
        )

"""The report's "Residual risk and limits of the threat model" section, generated from what
the run did and did not test.

Which perturbations were tried (attack, norm, epsilon range) and which were not; how much the
data can say (images, synthetic scenes, intervals that reach across thresholds); how much a
certificate soundness PASS is worth, read off the measured tightness (a PASS against loose
certificates is low-power evidence: attacks that cannot get near the certified radius cannot
catch a constant that is too small); diagnostic checks that could not apply; and what the
suites explicitly do not claim.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from audit.report.accessors import as_list, claims, mapping, recorded, suites
from audit.report.format import finite, fmt_any, fmt_number
from audit.report.requirements import FEW_IMAGES, evidence_warnings

#: a median certified/empirical radius ratio below this makes attacks poor judges of soundness
LOOSE = 0.5
_NORMS = {"linf": "L-infinity", "l2": "L2"}


def _tested(results: Mapping[str, Any]) -> tuple[list[str], set[str], set[str]]:
    """Lines saying what was tested, the norms attacked and the attack families used."""
    ranges: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    families: set[str] = set()
    for entry in as_list(recorded(results, "attacks")):
        entry = mapping(entry)
        if entry.get("family") == "random":
            continue
        eps = finite(entry.get("eps"))
        if eps is None:
            continue
        families.add(str(entry.get("family")))
        ranges[(str(entry.get("attack")), str(entry.get("norm")))].append(
            (eps, str(entry.get("eps_text") or fmt_number(eps)))
        )
    lines = []
    for (attack, norm), points in ranges.items():
        points.sort()
        span = points[0][1] if len(points) == 1 else f"{points[0][1]} to {points[-1][1]}"
        lines.append(f"{attack}: {_NORMS.get(norm, norm)} perturbations, eps {span}")
    for entry in as_list(recorded(results, "min_norm")):
        entry = mapping(entry)
        norm = _NORMS.get(str(entry.get("norm")), fmt_any(entry.get("norm")))
        lines.append(
            f"{fmt_any(entry.get('attack'))}: minimal-norm {norm} search for each pixel's "
            "flip distance"
        )
    for entry in as_list(recorded(results, "certificates")):
        entry = mapping(entry)
        radii = [r for r in as_list(entry.get("radii")) if finite(r)]
        if radii:
            lines.append(
                f"{fmt_any(entry.get('certifier'))} certificates: L2 radii up to "
                f"{fmt_number(max(radii))}"
            )
    severities: dict[str, list[float]] = defaultdict(list)
    for entry in as_list(recorded(results, "corruptions")):
        entry = mapping(entry)
        value = finite(entry.get("severity"))
        if value is not None:
            severities[fmt_any(entry.get("corruption"))].append(value)
    if severities:
        top = max(max(v) for v in severities.values())
        lines.append(
            f"natural corruptions ({', '.join(severities)}), severities up to {top:g} of "
            "imagecorruptions' 1-5 scale, each image corrupted with its own seed"
        )
    norms = {norm for (_, norm) in ranges}
    return lines, norms, families


def _untested(results: Mapping[str, Any], norms: set[str], families: set[str]) -> list[str]:
    kinds = {str(c.get("kind")) for c in claims(results)}
    out = []
    if not norms:
        out.append("No adversarial attack was run: nothing is known about worst-case inputs.")
    for norm, name in _NORMS.items():
        if norms and norm not in norms:
            out.append(f"No {name} attack was run.")
    if norms and "iterative" not in families:
        out.append(
            "Only single-step attacks were run; iterative attacks are much stronger and can "
            "lower every number above."
        )
    if norms:
        out.append(
            "Only white-box gradient attacks within a norm ball were tried: no black-box, "
            "transfer, patch or physical attacks, no perturbations outside the ball "
            "(rotations, colour shifts), and no attack adapted to a defence."
        )
    if not kinds & {"corruption", "corruption_search"}:
        out.append(
            "No natural corruptions (noise, blur, weather, digital) were tested: "
            "robustness to them is not claimed."
        )
    return out


def _data_limits(results: Mapping[str, Any]) -> list[str]:
    dataset = mapping(mapping(results.get("provenance")).get("dataset"))
    out = []
    count = dataset.get("num_samples")
    if isinstance(count, int) and count < FEW_IMAGES:
        out.append(
            f"Only {count} image(s) were audited: intervals are wide and rare failure modes "
            "are unlikely to appear."
        )
    if dataset.get("kind") == "synthetic":
        out.append("The images are synthetic: nothing here transfers to real scenes unchecked.")
    crossing = [
        str(c.get("nodeid"))
        for c in claims(results)
        if c.get("verdict") == "passed"
        and any("crosses the threshold" in w for w in evidence_warnings(c))
    ]
    if crossing:
        out.append(
            f"{len(crossing)} claim(s) passed on the estimate while their interval reaches "
            f"across the threshold ({', '.join(crossing)}): more images could turn them."
        )
    return out


def _soundness_power(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Per soundness check: what its PASS is worth given the certificates' tightness."""
    out = []
    for entry in as_list(recorded(results, "soundness")):
        entry = mapping(entry)
        lipschitz = mapping(entry.get("lipschitz"))
        proven = lipschitz.get("kind") == "computed"
        for check in as_list(entry.get("checks")):
            check = mapping(check)
            tightness = finite(check.get("tightness_median"))
            if tightness is None:
                continue
            claim = fmt_any(entry.get("claim"))
            attack = fmt_any(check.get("attack"))
            if tightness >= LOOSE:
                text = (
                    f"{claim}, {attack}: certified radii are a median {fmt_number(tightness)} "
                    "of the distance at which the attack flipped each pixel; the attack got "
                    "close enough to catch a constant that is too small."
                )
                level = "low"
            else:
                factor = 1 / tightness if tightness > 0 else float("inf")
                text = (
                    f"{claim}, {attack}: certified radii are a median {fmt_number(tightness)} "
                    f"of the distance at which the attack flipped each pixel, so a Lipschitz "
                    f"constant up to {factor:.3g} times too small would still have passed: "
                    "this PASS is low-power evidence of soundness."
                    + (
                        " The constant is proven from the weights, which is what the "
                        "certificates' soundness rests on."
                        if proven
                        else " The constant is claimed, not proven: the certificates rest on "
                        "that claim alone."
                    )
                )
                level = "medium" if proven else "high"
            out.append({"text": text, "level": level})
    return out


def _unproven(results: Mapping[str, Any]) -> list[str]:
    return [
        f"{c.get('nodeid')}: conditional on {c['unproven']}"
        for c in claims(results)
        if isinstance(c.get("unproven"), str) and c["unproven"]
    ]


def _checks_not_applied(results: Mapping[str, Any]) -> list[str]:
    coverage = mapping(results.get("diagnostic_coverage"))
    return [
        f"{check}: {fmt_any(mapping(entry).get('reason'))}"
        for check, entry in coverage.items()
        if mapping(entry).get("status") == "not applicable"
    ]


def build_risk(results: Mapping[str, Any]) -> dict[str, Any]:
    tested, norms, families = _tested(results)
    non_claims = [
        {"suite": fmt_any(suite.get("name")), "text": str(item)}
        for suite in suites(results)
        for item in as_list(suite.get("non_claims"))
    ]
    return {
        "tested": tested,
        "untested": _untested(results, norms, families),
        "data": _data_limits(results),
        "soundness": _soundness_power(results),
        "unproven": _unproven(results),
        "checks_not_applied": _checks_not_applied(results),
        "non_claims": non_claims,
    }

"""Signs of a weak evaluation or of gradient masking, read off the attack results.

After Athalye et al. (2018) and Arnab et al. (2018, who saw CRFs mask gradients for
single-step attacks): iterative attacks must be at least as strong as single-step ones,
damage must grow with epsilon, a large epsilon must flip nearly everything, gradients must
be finite and non-zero, and random noise of the same norm must be weaker than the attack.
Each violated expectation is a diagnostic in the results and the report, never a failed
claim: it says the numbers may flatter the model, not that a claim is false.

Everything here is a pure function of the attack entries written to ``results.json``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

CHECKS: dict[str, str] = {
    "iterative_weaker": "iterative attacks at least as strong as single-step ones",
    "not_monotonic": "damage grows with epsilon",
    "low_success": "a large epsilon flips nearly every pixel",
    "bad_gradients": "input gradients finite and non-zero",
    "noise_as_strong": "the attack beats random noise of the same norm",
}

#: an mIoU difference below this is noise of the evaluation, not a finding
MIOU_TOLERANCE = 0.005
#: epsilons from which an iterative attack is expected to flip most pixels
LARGE_EPS = {"linf": 16 / 255, "l2": 2.0}
LOW_SUCCESS = 0.5
#: share of image gradients that may be all-zero before it is reported
ZERO_GRADIENT_SHARE = 0.05
#: below this share of flipped pixels, noise and attack are both too weak to compare
NOISE_FLOOR = 0.005


def _miou(entry: Mapping[str, Any]) -> float:
    value = (entry.get("metrics") or {}).get("miou")
    return float(value) if isinstance(value, int | float) else math.nan


def _group(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    params = entry.get("params") or {}
    return (str(entry.get("attack")), repr(sorted(params.items())), str(entry.get("norm")))


def _where(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('norm')} eps={entry.get('eps_text')}"


def _finding(check: str, entry: Mapping[str, Any], message: str) -> dict[str, Any]:
    return {
        "check": check,
        "attack": entry.get("attack"),
        "norm": entry.get("norm"),
        "eps_text": entry.get("eps_text"),
        "evaluation": entry.get("id"),
        "message": message,
    }


def _iterative_weaker(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    singles = [e for e in entries if e.get("family") == "single_step"]
    for it in (e for e in entries if e.get("family") == "iterative"):
        least_likely = str(it.get("attack")).endswith("-ll")
        for single in singles:
            if (
                single.get("norm") != it.get("norm")
                or single.get("eps") != it.get("eps")
                or str(single.get("attack")).endswith("-ll") != least_likely
            ):
                continue
            if _miou(it) > _miou(single) + MIOU_TOLERANCE:
                out.append(
                    _finding(
                        "iterative_weaker",
                        it,
                        f"{it.get('attack')} (mIoU {_miou(it):.3f}) is weaker than "
                        f"{single.get('attack')} (mIoU {_miou(single):.3f}) at {_where(it)}: "
                        "an iterative attack should be at least as strong as one step; "
                        "gradient masking, or too few steps or too small a step size",
                    )
                )
    return out


def _by_group(entries: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for entry in entries:
        if isinstance(entry.get("eps"), int | float):
            groups[_group(entry)].append(entry)
    for members in groups.values():
        members.sort(key=lambda e: float(e["eps"]))
    return groups


def _not_monotonic(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for members in _by_group(entries).values():
        if members[0].get("family") == "random":
            continue
        for i, larger in enumerate(members[1:], start=1):
            worst = min(members[:i], key=_miou)
            if _miou(larger) > _miou(worst) + MIOU_TOLERANCE:
                out.append(
                    _finding(
                        "not_monotonic",
                        larger,
                        f"{larger.get('attack')} leaves mIoU {_miou(larger):.3f} at "
                        f"{_where(larger)} but {_miou(worst):.3f} at the smaller "
                        f"eps={worst.get('eps_text')}: damage should grow with epsilon",
                    )
                )
    return out


def _each(
    check: str,
    entries: Sequence[Mapping[str, Any]],
    message: Callable[[Mapping[str, Any]], str | None],
) -> list[dict[str, Any]]:
    """The findings of a check that reads one entry at a time: ``message`` says what is
    wrong with an entry, or ``None``."""
    return [_finding(check, e, text) for e in entries if (text := message(e)) is not None]


def _low_success(top: Mapping[str, Any]) -> str | None:
    """``top``: the entry of a group's largest epsilon."""
    large = LARGE_EPS.get(str(top.get("norm")))
    success = top.get("success_rate")
    if (
        top.get("family") == "iterative"
        and large is not None
        and float(top["eps"]) >= large
        and isinstance(success, int | float)
        and success < LOW_SUCCESS
    ):
        return (
            f"{top.get('attack')} flips only {success:.0%} of the correctly "
            f"classified pixels at its largest epsilon ({_where(top)}); an attack "
            "this large should flip nearly all of them"
        )
    return None


def _bad_gradients(entry: Mapping[str, Any]) -> str | None:
    g = entry.get("gradients") or {}
    total = g.get("image_gradients") or 0
    zero, nonfinite = g.get("zero") or 0, g.get("nonfinite") or 0
    if total and (nonfinite > 0 or zero / total > ZERO_GRADIENT_SHARE):
        return (
            f"{entry.get('attack')} at {_where(entry)}: {zero} of {total} image "
            f"gradients were all zero and {nonfinite} not finite; the attack may be "
            "blind (saturated softmax, non-differentiable layers, NaN in the model)"
        )
    return None


def _noise_as_strong(entry: Mapping[str, Any]) -> str | None:
    noise = entry.get("noise") or {}
    attack_rate, noise_rate = entry.get("success_rate"), noise.get("success_rate")
    if (
        entry.get("family") != "random"
        and isinstance(attack_rate, int | float)
        and isinstance(noise_rate, int | float)
        and noise_rate >= NOISE_FLOOR
        and attack_rate <= noise_rate
    ):
        return (
            f"random noise of the same norm flips {noise_rate:.1%} of the pixels, "
            f"{entry.get('attack')} only {attack_rate:.1%} at {_where(entry)}: the "
            "attack is not using the gradient"
            + (
                " (a least-likely attack aims at one far class, not at any error: "
                "weak damage is expected of it on a smooth model, less so of the "
                "untargeted attacks)"
                if str(entry.get("attack")).endswith("-ll")
                else ""
            )
        )
    return None


def _merge(findings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding per check and attack: a sweep that trips a check at six epsilons is one
    problem, listed with every epsilon (``eps_texts``, ``evaluations``) and the first message."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for finding in findings:
        key = (finding["check"], str(finding["attack"]), str(finding["norm"]))
        if key not in merged:
            merged[key] = {
                **finding,
                "eps_texts": [finding["eps_text"]],
                "evaluations": [finding["evaluation"]],
            }
            continue
        entry = merged[key]
        if finding["eps_text"] not in entry["eps_texts"]:
            entry["eps_texts"].append(finding["eps_text"])
        entry["evaluations"].append(finding["evaluation"])
    for entry in merged.values():
        others = [e for e in entry["eps_texts"] if e != entry["eps_text"]]
        if others:
            entry["message"] += f" (also at eps={', '.join(others)})"
    return list(merged.values())


def attack_diagnostics(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every diagnostic the attack entries of a results record raise, in check order.

    The entries are read in a fixed order (attack, norm, epsilon), not the order they were
    computed in, so a record merged from several processes reads the same as a serial one.
    """
    entries = sorted(
        (e for e in entries if isinstance(e, Mapping)),
        key=lambda e: (
            str(e.get("attack")),
            str(e.get("norm")),
            e["eps"] if isinstance(e.get("eps"), int | float) else 0.0,
            str(e.get("id")),
        ),
    )
    return _merge(
        [
            *_iterative_weaker(entries),
            *_not_monotonic(entries),
            *_each("low_success", [m[-1] for m in _by_group(entries).values()], _low_success),
            *_each("bad_gradients", entries, _bad_gradients),
            *_each("noise_as_strong", entries, _noise_as_strong),
        ]
    )


# -- which checks could say anything ------------------------------------------------------------

FLAGGED, CLEAR, NOT_APPLICABLE = "flagged", "clear", "not applicable"


def _pairs_for_iterative(entries: Sequence[Mapping[str, Any]]) -> int:
    singles = {
        (e.get("norm"), e.get("eps"), str(e.get("attack")).endswith("-ll"))
        for e in entries
        if e.get("family") == "single_step"
    }
    return sum(
        1
        for e in entries
        if e.get("family") == "iterative"
        and (e.get("norm"), e.get("eps"), str(e.get("attack")).endswith("-ll")) in singles
    )


def _has_large_iterative(top: Mapping[str, Any]) -> bool:
    large = LARGE_EPS.get(str(top.get("norm")))
    return (
        top.get("family") == "iterative"
        and large is not None
        and float(top["eps"]) >= large
        and isinstance(top.get("success_rate"), int | float)
    )


def _noise_comparable(entry: Mapping[str, Any]) -> bool:
    noise = (entry.get("noise") or {}).get("success_rate")
    return (
        entry.get("family") != "random"
        and isinstance(entry.get("success_rate"), int | float)
        and isinstance(noise, int | float)
        and noise >= NOISE_FLOOR
    )


#: per check: how many attack evaluations it could judge, and what it needs when none
_APPLICABILITY: dict[str, tuple[Callable[[Sequence[Mapping[str, Any]]], int], str]] = {
    "iterative_weaker": (
        _pairs_for_iterative,
        "needs a single-step and an iterative attack at the same norm and epsilon",
    ),
    "not_monotonic": (
        lambda entries: sum(
            len(m)
            for m in _by_group(entries).values()
            if len(m) > 1 and m[0].get("family") != "random"
        ),
        "needs one attack at two or more epsilons",
    ),
    "low_success": (
        lambda entries: sum(1 for m in _by_group(entries).values() if _has_large_iterative(m[-1])),
        "needs an iterative attack at Linf eps >= 16/255 or L2 eps >= 2",
    ),
    "bad_gradients": (
        lambda entries: sum(
            1 for e in entries if ((e.get("gradients") or {}).get("image_gradients") or 0) > 0
        ),
        "no attack recorded the input gradients it used",
    ),
    "noise_as_strong": (
        lambda entries: sum(1 for e in entries if _noise_comparable(e)),
        f"random noise flipped under {NOISE_FLOOR:.1%} of the pixels wherever it was run: "
        "too few to compare an attack with",
    ),
}


def diagnostic_coverage(
    entries: Sequence[Mapping[str, Any]], findings: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per check: ``flagged`` (it found something), ``clear`` (it judged ``evaluations``
    attack evaluations and found nothing) or ``not applicable`` (the run gave it nothing to
    judge, ``reason`` says what it needs).  A check that could not run is never shown as
    clear: a reviewer must not read silence as a pass."""
    entries = [e for e in entries if isinstance(e, Mapping)]
    flagged = {str(f.get("check")) for f in findings}
    coverage = {}
    for check, (applicable, needs) in _APPLICABILITY.items():
        count = applicable(entries) if entries else 0
        if check in flagged:
            status, reason = FLAGGED, None
        elif count:
            status, reason = CLEAR, None
        else:
            status = NOT_APPLICABLE
            reason = "no attack was evaluated in this run" if not entries else needs
        coverage[check] = {"status": status, "evaluations": count, "reason": reason}
    return coverage

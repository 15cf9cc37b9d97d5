"""The gradient-masking diagnostics, on hand-made attack entries with known findings."""

from __future__ import annotations

from typing import Any

from audit.record.diagnostics import CHECKS, attack_diagnostics


def entry(attack: str, eps: float, miou: float, **extra: Any) -> dict[str, Any]:
    family = {"fgsm": "single_step", "fgsm-ll": "single_step", "noise": "random"}.get(
        attack, "iterative"
    )
    return {
        "id": f"{attack}-{eps}",
        "attack": attack,
        "family": family,
        "params": {},
        "norm": "linf",
        "eps": eps,
        "eps_text": f"{round(eps * 255)}/255",
        "metrics": {"miou": miou},
        "success_rate": extra.pop("success_rate", 0.9),
        "noise": extra.pop("noise", {"miou": 0.8, "success_rate": 0.01}),
        "gradients": extra.pop("gradients", {"image_gradients": 10, "zero": 0, "nonfinite": 0}),
        **extra,
    }


def checks(entries: list[dict[str, Any]]) -> list[str]:
    return [d["check"] for d in attack_diagnostics(entries)]


def test_a_healthy_evaluation_raises_nothing() -> None:
    entries = [
        entry("fgsm", 4 / 255, 0.5),
        entry("fgsm", 16 / 255, 0.3),
        entry("ifgsm", 4 / 255, 0.4),
        entry("ifgsm", 16 / 255, 0.1, success_rate=0.95),
    ]
    assert checks(entries) == []


def test_iterative_weaker_than_single_step_is_flagged_per_matching_variant() -> None:
    entries = [
        entry("fgsm", 4 / 255, 0.3),
        entry("ifgsm", 4 / 255, 0.5),
        # least-likely variants are compared with each other, not with plain FGSM
        entry("fgsm-ll", 4 / 255, 0.6),
        entry("ifgsm-ll", 4 / 255, 0.55),
    ]
    (finding,) = attack_diagnostics(entries)
    assert finding["check"] == "iterative_weaker"
    assert finding["attack"] == "ifgsm"
    assert "weaker than fgsm" in finding["message"]


def test_damage_falling_with_epsilon_is_flagged() -> None:
    entries = [entry("pgd", 2 / 255, 0.4), entry("pgd", 8 / 255, 0.6), entry("pgd", 16 / 255, 0.1)]
    (finding,) = attack_diagnostics(entries)
    assert finding["check"] == "not_monotonic"
    assert finding["eps_text"] == "2/255" or "8/255" in finding["message"]


def test_low_success_at_a_large_epsilon_bad_gradients_and_noise() -> None:
    entries = [
        entry("pgd", 16 / 255, 0.5, success_rate=0.2),
        entry("segpgd", 4 / 255, 0.7, gradients={"image_gradients": 10, "zero": 0, "nonfinite": 1}),
        entry("cospgd", 4 / 255, 0.79, success_rate=0.01, noise={"success_rate": 0.02}),
    ]
    assert sorted(checks(entries)) == ["bad_gradients", "low_success", "noise_as_strong"]


def test_a_sweep_tripping_a_check_at_many_epsilons_is_one_finding() -> None:
    entries = [
        entry("ifgsm-ll", e / 255, 0.8, success_rate=0.001, noise={"success_rate": 0.01})
        for e in (1, 2, 4)
    ]
    (finding,) = attack_diagnostics(entries)
    assert finding["check"] == "noise_as_strong"
    assert finding["eps_texts"] == ["1/255", "2/255", "4/255"]
    assert "also at eps=2/255, 4/255" in finding["message"]
    assert len(finding["evaluations"]) == 3


def test_partial_entries_never_crash() -> None:
    assert attack_diagnostics([{}, {"attack": "pgd"}, "junk"]) == []  # type: ignore[list-item]
    assert set(CHECKS) == {
        "iterative_weaker",
        "not_monotonic",
        "low_success",
        "bad_gradients",
        "noise_as_strong",
    }

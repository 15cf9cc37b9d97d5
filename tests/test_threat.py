"""Threat-model parsing: fractions and floats, a mandatory norm, clear refusals."""

from __future__ import annotations

import pytest

from audit.threat import ThreatModel, parse_epsilon, parse_norm


@pytest.mark.parametrize(
    ("raw", "value", "text"),
    [
        ("4/255", 4 / 255, "4/255"),
        (" 0.5 / 255 ", 0.5 / 255, "0.5/255"),
        (0.1, 0.1, "0.1"),
        ("0.03", 0.03, "0.03"),
        (0, 0.0, "0"),
    ],
)
def test_epsilon_forms(raw, value: float, text: str) -> None:
    eps = parse_epsilon(raw)
    assert eps.value == pytest.approx(value) and eps.text == text


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("4/0", "divides by zero"),
        ("-1", ">= 0"),
        ("inf", "finite"),
        (True, "fraction"),
        ("four", "fraction such as '4/255'"),
        ([1], r"\(list\)"),
    ],
)
def test_bad_epsilons_are_refused(raw, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_epsilon(raw)


def test_norm_is_explicit_and_labels_read_well() -> None:
    assert parse_norm("Linf") == "linf" and parse_norm("l2") == "l2"
    with pytest.raises(ValueError, match="expected one of linf, l2"):
        parse_norm("l1")
    threat = ThreatModel(parse_norm("linf"), parse_epsilon("4/255"))
    assert threat.label == "linf-4/255" and threat.describe() == "linf eps=4/255"
    assert threat.to_dict() == {"norm": "linf", "eps": 4 / 255, "eps_text": "4/255"}

"""The checks the claim kinds share (audit.claims.parsing): one wording whatever the kind."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from audit.claims import ClaimSpec, Threshold, Where
from audit.claims.parsing import expand_sweep, parse_epsilons, sweep_params, whole_number
from audit.errors import ConfigError
from audit.suite import parse_suite

WHERE = Where("suite.toml", "c")

#: one valid table per kind that has a ``metric`` key, without it
WITHOUT_METRIC = {
    "clean": 'id = "c"\nkind = "clean"\nmin = 0.5\n',
    "attack": 'id = "c"\nkind = "attack"\nattack = "pgd"\nnorm = "linf"\neps = "4/255"\n'
    "min = 0.5\n",
    "certified": 'id = "c"\nkind = "certified"\nnorm = "l2"\neps = 0.1\nmin = 0.5\n',
}
CLASS_PREFIX = {"clean": "class_iou:", "attack": "class_iou:", "certified": "certified_class_iou:"}


def parse(table: str) -> list[ClaimSpec]:
    suite = parse_suite(tomllib.loads(f"[[claims]]\n{table}"), path=Path("suite.toml"))
    return list(suite.claims)


@pytest.mark.parametrize("kind", sorted(WITHOUT_METRIC))
@pytest.mark.parametrize(
    ("metric", "match"),
    [
        (None, r"missing; say which metric the claim is about \(.*<class name>\)"),
        ("3", r"expected a string \(.*<class name>\), got 3"),
        ('"bogus"', "unknown metric 'bogus'; expected "),
        ('"{prefix} "', "unknown metric '{prefix} '"),  # a class name of spaces is none
    ],
)
def test_every_kind_words_a_bad_metric_the_same_way(
    kind: str, metric: str | None, match: str
) -> None:
    prefix = CLASS_PREFIX[kind]
    table = WITHOUT_METRIC[kind]
    if metric is not None:
        table += f"metric = {metric.format(prefix=prefix)}\n"
    with pytest.raises(ConfigError, match=match.format(prefix=prefix)) as info:
        parse(table)
    assert info.value.key == "metric"


@pytest.mark.parametrize(
    ("table", "what"),
    [
        (WITHOUT_METRIC["attack"] + 'metric = "miou"\n', "epsilon"),
        (WITHOUT_METRIC["certified"] + 'metric = "certified_miou"\n', "radius"),
    ],
)
def test_epsilon_lists_are_checked_alike(table: str, what: str) -> None:
    eps = next(line for line in table.splitlines() if line.startswith("eps = "))
    for value, message in [
        ("[]", f"an empty list; give at least one {what}"),
        ('["1/10", 0.1]', f"{what} 0.1 appears twice in the list"),
        ('"x"', "expected a number or a fraction"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            parse(table.replace(eps, f"eps = {value}"))
        assert info.value.key == "eps"
    with pytest.raises(ConfigError, match=r"missing; give an .* or a list of them") as info:
        parse(table.replace(eps + "\n", ""))
    assert info.value.key == "eps"


def test_whole_numbers() -> None:
    assert whole_number({"n": 3}, "n", WHERE) == 3
    assert whole_number({}, "n", WHERE, default=7) == 7
    assert whole_number({"n": 2}, "n", WHERE, low=2) == 2
    for value, low in [(0, 1), (True, 1), (2.0, 1), ("3", 1), (1, 2)]:
        with pytest.raises(ConfigError, match=f"expected a whole number >= {low}, got") as info:
            whole_number({"n": value}, "n", WHERE, low=low)
        assert info.value.key == "n"


def test_a_linf_epsilon_above_one_is_refused_and_an_l2_radius_is_not() -> None:
    with pytest.raises(ConfigError, match="Linf epsilon 4 is above 1"):
        parse_epsilons({"eps": 4}, WHERE, norm="linf")
    assert [e.text for e in parse_epsilons({"eps": [4, 0.5]}, WHERE, norm="l2")] == ["4", "0.5"]


def test_a_sweep_expands_into_one_item_per_value() -> None:
    epsilons = parse_epsilons({"eps": ["1/255", "2/255"]}, WHERE, norm="linf")
    params = {"attack": "pgd", **sweep_params("linf", epsilons)}
    spec = ClaimSpec("s", "c", "st", "attack", params, Threshold(min=0.5), "estimate", "f")
    items = expand_sweep(spec)
    assert [i.id for i in items] == ["c[linf-1/255]", "c[linf-2/255]"]
    assert [i.statement for i in items] == ["st (at linf eps=1/255)", "st (at linf eps=2/255)"]
    assert [i.params["eps"] for i in items] == ["1/255", "2/255"]
    assert all(i.params["_sweep"] == ["1/255", "2/255"] for i in items)
    single = replace(spec, params={**params, **sweep_params("linf", epsilons[:1])})
    assert expand_sweep(single) == [single]

"""Suite files: the documented form works as written; every mistake names file, claim and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.claims import known_kinds
from audit.errors import ConfigError
from audit.suite import builtin_suites, load_suite

ISSUE_FORM = """
name = "release-gate"
description = "Claims for the v2 release"
[[claims]]
id = "clean-miou"
statement = "Clean mIoU on the validation split is at least 0.75"
kind = "clean"
metric = "miou"
min = 0.75
"""


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_documented_form_parses_as_written(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, ISSUE_FORM))
    assert suite.name == "release-gate"
    assert suite.description == "Claims for the v2 release"
    (claim,) = suite.claims
    assert claim.nodeid == "release-gate::clean-miou"
    assert claim.kind == "clean"
    assert claim.params == {"metric": "miou"}
    assert (claim.threshold.min, claim.threshold.max) == (0.75, None)
    assert claim.statistic == "estimate"
    assert claim.source == str(tmp_path / "suite.toml")


def test_builtin_suite_by_name_and_relative_path(tmp_path: Path) -> None:
    assert "smoke" in builtin_suites()
    smoke = load_suite("smoke")
    assert smoke.name == "smoke" and smoke.claims
    write(tmp_path, ISSUE_FORM, "mine.toml")
    assert load_suite("mine.toml", base_dir=tmp_path).name == "release-gate"


def test_name_defaults_to_file_stem_and_class_metric(tmp_path: Path) -> None:
    text = '[[claims]]\nid = "car"\nkind = "clean"\nmetric = "class_iou:car"\nmax = 1\n'
    suite = load_suite(write(tmp_path, text, "gate.toml"))
    assert suite.name == "gate"
    assert suite.claims[0].params["metric"] == "class_iou:car"
    assert suite.claims[0].threshold.describe() == "<= 1"


CLAIM = 'id = "c"\nkind = "clean"\nmetric = "miou"\nmin = 0.5\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[claims]]\n" + CLAIM + "colour = 1\n", r"claim 'c', key 'colour': unknown key for kind"),
        ("[[claims]]\n" + CLAIM.replace("clean", "cleam"), r"key 'kind': unknown kind 'cleam'"),
        ("[[claims]]\n" + CLAIM.replace("min = 0.5\n", ""), r"key 'min': missing threshold"),
        ("[[claims]]\n" + CLAIM.replace("0.5", "1.5"), r"key 'min': 1.5 is out of range"),
        ("[[claims]]\n" + CLAIM.replace("0.5", '"high"'), r"key 'min': expected a number"),
        ("[[claims]]\n" + CLAIM.replace('"miou"', '"dice"'), r"key 'metric': unknown metric"),
        ("[[claims]]\n" + CLAIM.replace('metric = "miou"\n', ""), r"key 'metric': missing"),
        ("[[claims]]\n" + CLAIM + "max = 0.1\n", r"key 'min': min 0.5 exceeds max 0.1"),
        ("[[claims]]\n" + CLAIM + 'statistic = "median"\n', r"key 'statistic': expected one"),
        ("[[claims]]\n" + CLAIM.replace('"c"', '"has space"'), r"claim '#1', key 'id'"),
        ("[[claims]]\n" + CLAIM + "[[claims]]\n" + CLAIM, r"claim 'c', key 'id': duplicate id"),
        ('colour = "red"\n[[claims]]\n' + CLAIM, r"key 'colour': unknown top-level key"),
        ('name = "x"\n', r"key 'claims': a suite needs at least one"),
        ("[[claims\n", r"not valid TOML"),
    ],
)
def test_malformed_suite_error_names_file_claim_and_key(
    tmp_path: Path, text: str, match: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, "[[claims]]\n" + CLAIM.replace("clean", "nope"))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    for kind in known_kinds():
        assert kind in str(info.value)


def test_missing_suite_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no built-in suite named 'nothing'.*smoke"):
        load_suite("nothing", base_dir=tmp_path)

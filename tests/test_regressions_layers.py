"""Regressions found when claims, evaluations and the record became separate layers.

- a ``TypeError`` raised while an attack runs is a bug, not a ``params`` configuration error;
- ``certificate_soundness`` with ``certifier = "smoothing"`` is refused at collection;
- two soundness claims sharing one (cached) check are both in the record and the report;
- ``class_iou:<unknown class>`` is refused before any evaluation is computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.attacks import native
from conftest import TINY_DATA


def results(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "audit-report" / "results.json").read_text())


def html(pytester: pytest.Pytester) -> str:
    return (pytester.path / "audit-report" / "index.html").read_text()


def audit_args(model: Path | str, suite: str) -> list[str]:
    return ["--audit", str(model), "--audit-suite", suite, "--audit-data", TINY_DATA]


def attack_claim(claim_id: str, attack: str, extra: str = "", norm: str = "linf") -> str:
    return f"""
[[claims]]
id = "{claim_id}"
kind = "attack"
attack = "{attack}"
norm = "{norm}"
eps = "2/255"
metric = "miou"
min = 0.0
{extra}
"""


# -- 1. parameters are checked by building the attack; a TypeError in the run is a bug --------


def test_unknown_library_attack_parameter_is_an_error_naming_params(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytest.importorskip("torchattacks")
    pytest.importorskip("adv_lib", reason="adv-lib is the 'advlib' extra")
    pytester.makefile(
        ".toml",
        params=attack_claim("ta", "torchattacks:PGD", "params = { bogus = 1 }")
        + """
[[claims]]
id = "mn"
kind = "min_norm"
attack = "advlib:dag"
norm = "linf"
params = { bogus = 1 }
min = 0.0
""",
    )
    result = run_audit(*audit_args(tiny_model, "params.toml"))
    result.assert_outcomes(failed=2)
    claims = {c["id"]: c for c in results(pytester)["claims"]}
    for claim_id in ("ta", "mn"):
        message = claims[claim_id]["message"]
        assert claims[claim_id]["verdict"] == "error", message
        assert f"claim '{claim_id}', key 'params'" in message and "bogus" in message
    result.stdout.fnmatch_lines(["*claim 'ta', key 'params'*bogus*"])


def test_unknown_native_attack_parameter_is_a_collection_error_naming_params(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", params=attack_claim("pgd", "pgd", "params = { bogus = 1 }"))
    result = run_audit(*audit_args(tiny_model, "params.toml"))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*params.toml, claim 'pgd', key 'params': *'bogus'*"])
    record = results(pytester)
    assert record["status"] == "error"
    assert "key 'params'" in record["errors"][0]["message"]


def test_a_type_error_inside_an_attack_run_is_reported_as_a_bug_not_as_params(
    pytester: pytest.Pytester, run_audit, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_run(self, images, labels, *, threat, ctx):
        raise TypeError("internal bug")

    monkeypatch.setattr(native.PGD, "run", broken_run)
    pytester.makefile(".toml", bug=attack_claim("pgd", "pgd", "steps = 2"))
    result = run_audit(*audit_args(tiny_model, "bug.toml"))
    result.assert_outcomes(failed=1)
    (claim,) = results(pytester)["claims"]
    assert claim["verdict"] == "error"
    assert "TypeError: internal bug" in claim["message"]
    assert "key 'params'" not in claim["message"]
    assert "key 'params'" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*TypeError: internal bug*"])


# -- 2. soundness checks attack a Lipschitz certificate, not a smoothing one -----------------


def test_soundness_with_the_smoothing_certifier_is_a_collection_error(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(
        ".toml",
        smooth="""
[[claims]]
id = "sound"
kind = "certificate_soundness"
certifier = "smoothing"
norm = "l2"
eps = 0.1
attacks = ["pgd"]
""",
    )
    result = run_audit(*audit_args(tiny_model, "smooth.toml"))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*smooth.toml, claim 'sound', key 'certifier': *smoothing*"])
    output = result.stdout.str()
    assert "KeyError" not in output and "Traceback" not in output
    record = results(pytester)
    assert record["status"] == "error" and record["complete"] is False
    message = record["errors"][0]["message"]
    assert "smooth.toml" in message and "claim 'sound'" in message
    assert "key 'certifier'" in message and "lipschitz" in message
    assert "claim &#39;sound&#39;, key &#39;certifier&#39;" in html(pytester)


# -- 3. every soundness claim is reported, also one whose check was cached -------------------

SOUNDNESS_TWICE = """
[[claims]]
id = "sound-a"
kind = "certificate_soundness"
norm = "l2"
eps = 0.05
attacks = ["pgd"]
steps = 2

[[claims]]
id = "sound-b"
kind = "certificate_soundness"
norm = "l2"
eps = 0.05
attacks = ["pgd"]
steps = 2
"""


def test_two_soundness_claims_sharing_one_check_are_both_reported(
    pytester: pytest.Pytester, run_audit
) -> None:
    pytester.makefile(".toml", twice=SOUNDNESS_TWICE)
    result = run_audit(
        "--audit",
        "--audit-suite",
        "twice.toml",
        "--audit-data",
        "synthetic?n=2&size=32x64",
        "--audit-limit",
        "2",
        "-rA",
    )
    result.assert_outcomes(passed=2)
    record = results(pytester)
    entries = record["evaluations"]["soundness"]
    assert [e["claim"] for e in entries] == ["twice::sound-a", "twice::sound-b"]
    assert entries[0]["checks"] == entries[1]["checks"]  # one check, computed once
    page = html(pytester)
    assert "sound-a" in page and "sound-b" in page


# -- 4. a class the model does not have is refused before any work ---------------------------


def test_unknown_class_in_a_metric_is_refused_before_any_evaluation(
    pytester: pytest.Pytester, run_audit
) -> None:
    # The demo model has a Lipschitz bound, so the certification would run if not refused.
    pytester.makefile(
        ".toml",
        classes="""
[[claims]]
id = "attack-unicorn"
kind = "attack"
attack = "pgd"
norm = "linf"
eps = "2/255"
steps = 2
metric = "class_iou:unicorn"
min = 0.0

[[claims]]
id = "certified-unicorn"
kind = "certified"
norm = "l2"
eps = 0.1
metric = "certified_class_iou:unicorn"
min = 0.0
""",
    )
    result = run_audit(*audit_args("demo", "classes.toml"))
    result.assert_outcomes(failed=2)
    record = results(pytester)
    # Nothing was computed for either claim: no attack run, no certification.
    evaluations = record["evaluations"]
    assert not evaluations.get("attacks")
    assert not evaluations.get("certificates")
    class_names = record["provenance"]["dataset"]["class_names"]
    claims = {c["id"]: c for c in record["claims"]}
    for claim_id, metric in (
        ("attack-unicorn", "class_iou:unicorn"),
        ("certified-unicorn", "certified_class_iou:unicorn"),
    ):
        message = claims[claim_id]["message"]
        assert claims[claim_id]["verdict"] == "error", message
        assert f"claim '{claim_id}', key 'metric'" in message
        assert "'unicorn'" in message and metric in message
        assert all(repr(name) in message for name in class_names)

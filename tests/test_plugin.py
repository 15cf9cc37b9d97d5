"""The pytest plugin, driven through pytester: items, outcomes, messages, report files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA, ColourNet, NaNNet, save_torchscript

PASS_AND_FAIL = """
name = "gate"
description = "one passing and one failing claim"
[[claims]]
id = "accuracy-floor"
statement = "Pixel accuracy is at least 0"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0

[[claims]]
id = "miou-high"
statement = "Clean mIoU is at least 0.99"
kind = "clean"
metric = "miou"
min = 0.99
"""


def audit_args(model: Path, suite: str = "gate.toml") -> list[str]:
    """Options auditing ``model`` with ``suite`` on the tiny synthetic data."""
    return ["--audit", str(model), "--audit-suite", suite, "--audit-data", TINY_DATA]


def results(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "audit-report" / "results.json").read_text())


def test_passing_and_failing_claims_exit_1_with_a_sentence(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    result = run_audit(*audit_args(tiny_model), "-rA")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*claim 'miou-high' violated: mIoU on clean images is 0.*, "
            "claim requires >= 0.99 (4 images*",
            "audit report: *audit-report*index.html",
            "PASSED gate::accuracy-floor",
            "FAILED gate::miou-high - claim 'miou-high' violated*",
        ]
    )
    record = results(pytester)
    assert record["schema_version"] == 1 and record["complete"] is True
    assert record["status"] == "failed"
    claims = {c["nodeid"]: c for c in record["claims"]}
    failed = claims["gate::miou-high"]
    assert failed["verdict"] == "failed" and failed["threshold"] == {"min": 0.99, "max": None}
    assert 0.0 <= failed["measured"] < 0.99 and failed["num_samples"] == 4
    assert f"{failed['measured']:.3f}" in failed["message"]
    assert claims["gate::accuracy-floor"]["verdict"] == "passed"
    assert (
        record["provenance"]["model"]["sha256"] and record["provenance"]["dataset"]["fingerprint"]
    )
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "miou-high" in html and "accuracy-floor" in html and "&gt;= 0.99" in html


def test_keyword_selection_runs_and_records_only_selected_claims(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    result = run_audit(
        *audit_args(tiny_model),
        "-k",
        "floor",
    )
    result.assert_outcomes(passed=1, deselected=1)
    assert result.ret == pytest.ExitCode.OK
    record = results(pytester)
    assert [c["nodeid"] for c in record["claims"]] == ["gate::accuracy-floor"]
    assert record["status"] == "passed" and record["complete"] is True


def test_malformed_suite_is_a_collection_error_and_the_report_is_still_written(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(
        ".toml", bad='[[claims]]\nid = "x"\nkind = "clean"\nmetric = "miou"\nmin = 2\n'
    )
    result = run_audit("--audit", str(tiny_model), "--audit-suite", "bad.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*bad.toml, claim 'x', key 'min': 2 is out of range*"])
    assert "Traceback" not in result.stdout.str()
    record = results(pytester)
    assert record["status"] == "error" and record["complete"] is False
    assert "key 'min'" in record["errors"][0]["message"]


def test_pickled_model_is_refused_without_running_its_code(
    pytester: pytest.Pytester, run_audit
) -> None:
    marker = pytester.path / "pwned"
    payload = pytester.path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Evil()}, payload)
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    result = run_audit("--audit", str(payload), "--audit-suite", "gate.toml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*--audit-trust-pickle*"])
    assert not marker.exists()
    record = results(pytester)
    assert {c["verdict"] for c in record["claims"]} == {"error"}
    assert "--audit-trust-pickle" in record["claims"][0]["message"]
    assert pickle  # the payload above really is a pickle; torch.save pickles


def test_wrong_number_of_classes_names_model_and_dataset(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(ColourNet(num_classes=5), pytester.path / "five.pt")
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    result = run_audit(
        *audit_args(model),
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*model 'five.pt' outputs 5 classes per pixel but dataset 'synthetic' has 8 classes*"]
    )


def test_nan_logits_name_the_sample_and_keep_the_report(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(NaNNet(), pytester.path / "nan.pt")
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    result = run_audit(
        *audit_args(model),
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*NaN or Inf logits*synthetic-000000*"])
    assert (pytester.path / "audit-report" / "index.html").is_file()
    assert results(pytester)["status"] == "error"


def test_expensive_work_happens_once_per_session(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    pytester.makeconftest(
        """
        import pytest
        from audit.engine import Engine
        calls = {"forward": 0, "engines": 0}
        original_forward, original_init = Engine.forward, Engine.__init__
        def forward(self, *a, **k):
            calls["forward"] += 1
            return original_forward(self, *a, **k)
        def init(self, *a, **k):
            calls["engines"] += 1
            original_init(self, *a, **k)
        Engine.forward, Engine.__init__ = forward, init
        def pytest_sessionfinish(session):
            print("\\nCOUNTS", calls["engines"], calls["forward"])
        """
    )
    result = run_audit(
        *audit_args(tiny_model),
        "--audit-batch-size",
        "2",
        "-s",
    )
    result.assert_outcomes(passed=1, failed=1)
    # 4 images in batches of 2: one engine, two forward passes for both claims and the report
    result.stdout.fnmatch_lines(["*COUNTS 1 2*"])


def test_exitfirst_marks_the_record_incomplete(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    suite = PASS_AND_FAIL.replace('"accuracy-floor"', '"a-first"') + PASS_AND_FAIL.split(
        "[[claims]]"
    )[1].replace('"accuracy-floor"', '"z-last"').join(["[[claims]]", ""])
    pytester.makefile(".toml", gate=suite.replace('id = "miou-high"', 'id = "b-fails"'))
    result = run_audit(*audit_args(tiny_model), "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    record = results(pytester)
    assert record["complete"] is False
    assert {c["id"]: c["verdict"] for c in record["claims"]}["z-last"] == "not_run"


def test_junitxml_carries_measured_value_and_threshold(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    run_audit(
        *audit_args(tiny_model),
        "--junitxml",
        "junit.xml",
    )
    xml = (pytester.path / "junit.xml").read_text()
    assert 'name="threshold" value="&gt;= 0.99"' in xml
    assert 'name="measured"' in xml
    assert 'classname="gate"' in xml or 'name="miou-high"' in xml


def test_last_failed_reruns_only_the_failing_claim(
    pytester: pytest.Pytester, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\n")
    args = [
        "-p",
        "audit.plugin",
        *audit_args(tiny_model),
    ]
    pytester.runpytest(*args).assert_outcomes(passed=1, failed=1)
    again = pytester.runpytest(*args, "--lf")
    again.assert_outcomes(failed=1, deselected=1)


def test_collect_only_does_not_load_the_model(pytester: pytest.Pytester, run_audit) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    result = run_audit("--audit", "does-not-exist.pt", "--audit-suite", "gate.toml", "--co", "-q")
    result.stdout.fnmatch_lines(["gate::accuracy-floor", "gate::miou-high"])
    assert result.ret == pytest.ExitCode.OK


def test_bad_option_value_is_a_usage_error(pytester: pytest.Pytester, run_audit) -> None:
    result = run_audit("--audit", "m.pt", "--audit-device", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*SegAudit: command line, key 'device': expected auto*"])


def test_plugin_is_inert_without_audit(pytester: pytest.Pytester, run_audit) -> None:
    pytester.makepyfile("def test_ok():\n    assert True\n")
    result = run_audit()
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "audit-report").exists()


def test_audit_only_skips_test_files_and_users_tests_run_otherwise(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=PASS_AND_FAIL)
    pytester.makepyfile(
        "from audit.evaluations import evaluate_clean\n\n\n"
        "def test_uses_engine(audit_engine):\n"
        "    assert evaluate_clean(audit_engine).num_samples == 4\n"
    )
    common = [
        *audit_args(tiny_model),
    ]
    run_audit(*common).assert_outcomes(passed=2, failed=1)
    run_audit(*common, "--audit-only").assert_outcomes(passed=1, failed=1)


def test_new_claim_kind_is_a_module_not_a_plugin_edit(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makeconftest(
        """
        from audit.claims import ClaimKind, Measurement, register
        from audit.evaluations import evaluate_clean

        @register
        class ImageCount(ClaimKind):
            name = "image_count"
            value_range = None
            @classmethod
            def parse(cls, raw, where):
                return {}
            @classmethod
            def measure(cls, spec, engine):
                n = evaluate_clean(engine).num_samples
                return Measurement(value=n, quantity="image count", condition="in the data",
                                   num_samples=n)
        """
    )
    pytester.makefile(".toml", custom='[[claims]]\nid = "n"\nkind = "image_count"\nmin = 4\n')
    result = run_audit(*audit_args(tiny_model, "custom.toml"))
    result.assert_outcomes(passed=1)

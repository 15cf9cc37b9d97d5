"""The audit record: atomic writes, partial runs, and the plain-Python API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from audit.config import Settings
from audit.metrics import finite_or_none
from audit.record.writer import RunRecorder, write_json_atomic
from audit.session import run_audit
from conftest import TINY_DATA

SUITE = """
name = "api"
[[claims]]
id = "floor"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0
[[claims]]
id = "ceiling"
kind = "clean"
metric = "miou"
min = 0.99
statistic = "ci_upper"
[[claims]]
id = "unknown-class"
kind = "clean"
metric = "class_iou:unicorn"
min = 0.1
"""


def test_run_audit_without_pytest_records_every_verdict(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "api.toml").write_text(SUITE)
    settings = Settings(
        model=str(tiny_model),
        data=TINY_DATA,
        suites=(str(tmp_path / "api.toml"),),
        report_dir=tmp_path / "report",
        base_dir=tmp_path,
        invocation_dir=tmp_path,
        bootstrap_resamples=200,
    )
    record = run_audit(settings)
    verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
    assert verdicts == {"floor": "passed", "ceiling": "failed", "unknown-class": "error"}
    # a broken claim is the headline, though another could not run
    assert record["complete"] is True and record["status"] == "failed"
    ceiling = next(c for c in record["claims"] if c["id"] == "ceiling")
    assert ceiling["compared"] == ceiling["interval"]["high"]
    assert "upper 95% bound of mIoU" in ceiling["message"]
    unknown = next(c for c in record["claims"] if c["id"] == "unknown-class")
    assert "unknown class 'unicorn'" in unknown["message"]
    assert "key 'metric'" in unknown["message"]
    on_disk = json.loads((tmp_path / "report" / "results.json").read_text())
    assert on_disk["claims"] == record["claims"]
    clean = on_disk["evaluations"]["clean"]
    assert len(clean["per_class"]) == 8 and clean["num_samples"] == 4
    for example in clean["examples"]:
        assert (tmp_path / "report" / example["prediction"]).is_file()
    assert (tmp_path / "report" / "index.html").is_file()


def test_interrupted_run_leaves_a_partial_record(
    pytester: pytest.Pytester, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\n")
    (pytester.path / "api.toml").write_text(SUITE)
    pytester.makeconftest(
        """
        import pytest
        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_call(item):
            if item.name == "ceiling":
                raise KeyboardInterrupt
        """
    )
    # A subprocess, so the Ctrl-C does not interrupt the test run itself.
    result = pytester.runpytest_subprocess(
        "-p",
        "audit.plugin",
        "--audit",
        str(tiny_model),
        "--audit-suite",
        "api.toml",
        "--audit-data",
        TINY_DATA,
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert record["complete"] is False
    verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
    assert verdicts["floor"] == "passed" and verdicts["unknown-class"] == "not_run"
    assert "INCOMPLETE" in (pytester.path / "audit-report" / "index.html").read_text().upper()


@pytest.mark.hand_made_records("a plain JSON file, not a record")
def test_atomic_write_leaves_no_temporary_file_and_refuses_nan(tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        write_json_atomic(target, {"a": math.nan})
    assert json.loads(target.read_text()) == {"a": 1}  # the old file survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_finite_or_none() -> None:
    assert finite_or_none(0.5) == 0.5
    assert finite_or_none(math.nan) is None
    assert finite_or_none(math.inf) is None
    assert finite_or_none(None) is None


def test_summary_and_status() -> None:
    rec = RunRecorder()
    assert rec.status(complete=True) == "passed"
    rec.record_error("suite x", "bad")
    assert rec.status(complete=True) == "error"
    assert rec.to_dict(complete=False)["errors"] == [{"where": "suite x", "message": "bad"}]

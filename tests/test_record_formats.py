"""What CI reads from a run: the record's JSON Schema, the CTRF export, the JUnit properties,
and the permissions of the files written."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from audit.config import Settings, resolve_settings
from audit.errors import ConfigError, InvalidRecord
from audit.files import write_text_atomic
from audit.record.ctrf import ctrf_report
from audit.schema import json_path, results_schema, validate_record
from audit.session import run_audit
from conftest import TINY_DATA

CTRF_SCHEMA = Path(__file__).parent / "data" / "ctrf.schema.json"
SUITE = """
name = "formats"
[[claims]]
id = "floor"
statement = "Pixel accuracy is at least 0"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0
[[claims]]
id = "ceiling"
statement = "Clean mIoU is at least 0.99"
kind = "clean"
metric = "miou"
min = 0.99
"""


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_ctrf(document: Any) -> None:
    schema = json.loads(CTRF_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A folder holding one finished run: ``report/`` and ``ctrf.json``."""
    folder = tmp_path_factory.mktemp("formats")
    (folder / "formats.toml").write_text(SUITE)
    run_audit(
        Settings(
            model=str(tiny_model),
            data=TINY_DATA,
            suites=(str(folder / "formats.toml"),),
            report_dir=folder / "report",
            base_dir=folder,
            invocation_dir=folder,
            bootstrap_resamples=50,
            ctrf=folder / "ctrf.json",
        )
    )
    return folder


def record_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report" / "results.json").read_text(encoding="utf-8"))


def test_a_run_record_follows_the_schema(recorded: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(results_schema())
    validate_record(record_of(recorded))


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        node = record
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return change


def _drop_threshold(record: dict[str, Any]) -> None:
    del record["claims"][0]["threshold"]


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        (
            _set(["claims", 0, "verdict"], "maybe"),
            'claims["formats::floor"].verdict',
            "'maybe' is not one of ['passed', 'failed', 'error', 'skipped', 'not_run']",
        ),
        (_drop_threshold, 'claims["formats::floor"]', "'threshold' is a required property"),
        (_set(["summary", "passed"], "1"), "summary.passed", "'1' is not of type 'integer'"),
        (_set(["bogus"], 1), "(record)", "('bogus' was unexpected)"),
        (
            _set(["evaluations", "clean", "per_class", 0, "support"], -1),
            "evaluations.clean.per_class[0].support",
            "-1 is less than the minimum of 0",
        ),
    ],
)
def test_schema_errors_name_where_they_are(
    recorded: Path, change: Callable[[dict[str, Any]], None], where: str, says: str
) -> None:
    record = copy.deepcopy(record_of(recorded))
    change(record)
    with pytest.raises(InvalidRecord) as caught:
        validate_record(record, source="results.json")
    assert caught.value.path == where
    assert str(caught.value).startswith(f"results.json: {where}: ")
    assert says in str(caught.value)


def test_json_path_quotes_keys_that_are_not_names() -> None:
    record = {"claims": [{"id": "no-node-id"}], "a-b": {"c": [1]}}
    assert json_path(record, ["claims", 0, "id"]) == "claims[0].id"
    assert json_path(record, ["a-b", "c", 0]) == '["a-b"].c[0]'
    assert json_path(record, []) == "(record)"


def _rerender(report_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit.report", str(report_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.hand_made_records("a record broken on purpose")
def test_report_command_refuses_a_record_that_fails_the_schema(
    recorded: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    shutil.copytree(recorded / "report", report)
    record = record_of(tmp_path)
    record["claims"][1]["verdict"] = "maybe"
    (report / "results.json").write_text(json.dumps(record), encoding="utf-8")
    (report / "index.html").write_text("old report", encoding="utf-8")

    done = _rerender(report)

    assert done.returncode != 0
    assert "claims[\"formats::ceiling\"].verdict: 'maybe' is not one of" in done.stderr
    assert "Traceback" not in done.stderr
    assert (report / "index.html").read_text(encoding="utf-8") == "old report"


def test_files_the_run_writes_are_readable_as_any_new_file(recorded: Path) -> None:
    written = [p for p in recorded.rglob("*") if p.is_file() and p.suffix != ".toml"]
    names = {p.name for p in written}
    assert {"results.json", "index.html", "ctrf.json"} <= names
    assert any(p.suffix == ".png" for p in written)
    expected = 0o666 & ~umask()
    assert {p.relative_to(recorded).as_posix(): mode(p) for p in written} == {
        p.relative_to(recorded).as_posix(): expected for p in written
    }


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "report.json"
    target.write_text("{}")
    target.chmod(0o600)  # the old file's mode is not kept: the new file replaces it
    previous = os.umask(mask)
    try:
        write_text_atomic(target, '{"new": true}\n', fsync=True)
    finally:
        os.umask(previous)
    assert mode(target) == 0o666 & ~mask
    assert target.read_text() == '{"new": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_ctrf_export_follows_the_official_schema(recorded: Path) -> None:
    document = json.loads((recorded / "ctrf.json").read_text(encoding="utf-8"))
    check_ctrf(document)
    record = record_of(recorded)
    results = document["results"]
    assert document["reportFormat"] == "CTRF" and results["tool"]["name"] == "pytest-segaudit"
    assert [t["name"] for t in results["tests"]] == ["formats::floor", "formats::ceiling"]
    assert [t["status"] for t in results["tests"]] == ["passed", "failed"]
    summary = results["summary"]
    assert (summary["tests"], summary["passed"], summary["failed"], summary["other"]) == (
        2,
        1,
        1,
        0,
    )
    assert summary["stop"] >= summary["start"] > 1_600_000_000_000  # milliseconds since 1970
    ceiling, claim = results["tests"][1], record["claims"][1]
    detail = ceiling["extra"]["segaudit.claim"]
    assert detail["measured"] == claim["measured"] and detail["threshold"] == {
        "min": 0.99,
        "max": None,
    }
    assert detail["interval"] == claim["interval"] and detail["verdict"] == "failed"
    assert ceiling["message"] == claim["message"] and "violated" in ceiling["message"]
    assert ceiling["duration"] == round(claim["duration_s"] * 1000)
    assert results["extra"]["segaudit.run"]["status"] == record["status"]


def test_ctrf_maps_every_verdict(recorded: Path) -> None:
    record = copy.deepcopy(record_of(recorded))
    template = record["claims"][0]
    record["claims"] = [
        {**template, "nodeid": f"formats::{verdict}", "verdict": verdict, "message": ""}
        for verdict in ("passed", "failed", "error", "skipped", "not_run")
    ]
    document = ctrf_report(record)
    check_ctrf(document)
    tests = document["results"]["tests"]
    assert [(t["status"], t["rawStatus"]) for t in tests] == [
        ("passed", "passed"),
        ("failed", "failed"),
        ("failed", "error"),  # could not be measured: it must not pass a CI gate
        ("skipped", "skipped"),
        ("other", "not_run"),
    ]
    assert "not run" in tests[-1]["message"]
    summary = document["results"]["summary"]
    assert [summary[s] for s in ("passed", "failed", "skipped", "pending", "other")] == [
        1,
        2,
        1,
        0,
        1,
    ]


def test_ctrf_setting_resolves_like_the_other_paths(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.segaudit]\nctrf = "ci/ctrf.json"\n')
    elsewhere = tmp_path / "sub"
    from_file = resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=elsewhere)
    assert from_file.ctrf == tmp_path / "ci" / "ctrf.json"
    from_cli = resolve_settings(rootdir=tmp_path, cli={"ctrf": "c.json"}, invocation_dir=elsewhere)
    assert from_cli.ctrf == elsewhere / "c.json"
    (tmp_path / "audit.toml").write_text("ctrf = 3\n")
    with pytest.raises(ConfigError, match="key 'ctrf': expected a file path, got 3"):
        resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=elsewhere)


GATE_ARGS = ("--audit-suite", "formats.toml", "--audit-data", TINY_DATA)


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    tree = ET.parse(path)
    return {
        case.get("name", ""): {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        for case in tree.iter("testcase")
    }


def test_junit_has_readable_properties_and_the_record_every_entry(
    pytester: pytest.Pytester, run_audit: Callable[..., pytest.RunResult], tiny_model: Path
) -> None:
    pytester.makefile(".toml", formats=SUITE)
    result = run_audit(
        "--audit", str(tiny_model), *GATE_ARGS, "--junitxml=junit.xml", "--audit-ctrf=ci/ctrf.json"
    )
    result.assert_outcomes(passed=1, failed=1)
    properties = junit_properties(pytester.path / "junit.xml")
    assert set(properties) == {"floor", "ceiling"}
    for name, verdict in (("floor", "passed"), ("ceiling", "failed")):
        assert set(properties[name]) == {"measured", "threshold", "verdict"}
        assert properties[name]["verdict"] == verdict
        float(properties[name]["measured"])
    assert properties["ceiling"]["threshold"] == ">= 0.99"
    assert "nodeid" not in (pytester.path / "junit.xml").read_text()  # no record entry in it
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert [c["verdict"] for c in record["claims"]] == ["passed", "failed"]
    check_ctrf(json.loads((pytester.path / "ci" / "ctrf.json").read_text()))


def test_an_interrupted_run_writes_its_ctrf_report(
    pytester: pytest.Pytester, run_audit: Callable[..., pytest.RunResult], tiny_model: Path
) -> None:
    pytester.makefile(".toml", formats=SUITE)
    pytester.makeconftest(
        """
        import pytest
        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_call(item):
            if item.name == "ceiling":
                pytest.exit("stopped by the test", returncode=2)
        """
    )
    result = run_audit("--audit", str(tiny_model), *GATE_ARGS, "--audit-ctrf", "ctrf.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = json.loads((pytester.path / "ctrf.json").read_text())
    check_ctrf(document)
    statuses = {t["name"]: t["status"] for t in document["results"]["tests"]}
    assert statuses == {"formats::floor": "passed", "formats::ceiling": "other"}
    run = document["results"]["extra"]["segaudit.run"]
    assert run["complete"] is False and "stopped early" in run["reason"]


def test_a_ctrf_path_that_is_a_folder_is_refused_at_startup(
    pytester: pytest.Pytester, run_audit: Callable[..., pytest.RunResult], tiny_model: Path
) -> None:
    pytester.makefile(".toml", formats=SUITE)
    (pytester.path / "out").mkdir()
    result = run_audit("--audit", str(tiny_model), *GATE_ARGS, "--audit-ctrf", "out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--audit-ctrf * is a folder; name a file*"])
    assert not (pytester.path / "audit-report" / "results.json").exists()


@pytest.mark.slow
def test_xdist_workers_send_each_entry_to_the_controller(
    pytester: pytest.Pytester, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\n")
    pytester.makefile(".toml", formats=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "audit.plugin", "-p", "xdist", "-n", "2", "-p", "no:cacheprovider",
        "--audit", str(tiny_model), *GATE_ARGS, "--junitxml=junit.xml", "--audit-ctrf=ctrf.json",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert record["complete"] is True
    assert {c["id"]: c["verdict"] for c in record["claims"]} == {
        "floor": "passed",
        "ceiling": "failed",
    }
    assert all(c["measured"] is not None for c in record["claims"])
    properties = junit_properties(pytester.path / "junit.xml")
    assert {name: set(p) for name, p in properties.items()} == {
        "floor": {"measured", "threshold", "verdict"},
        "ceiling": {"measured", "threshold", "verdict"},
    }
    check_ctrf(json.loads((pytester.path / "ctrf.json").read_text()))

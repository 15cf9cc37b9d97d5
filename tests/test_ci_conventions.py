"""What a CI pipeline relies on: "could not run" apart from "broke the claim", problems seen
at startup, runs of some claims that keep the complete record, the configured model, and
the table of claims at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audit.record.summary_table import claims_table
from conftest import TINY_DATA, report_files

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

TWO = """
name = "gate"
[[claims]]
id = "floor"
statement = "Pixel accuracy is at least 0"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0

[[claims]]
id = "ceiling"
statement = "Pixel accuracy is at most 0.001 (it is not)"
kind = "clean"
metric = "pixel_accuracy"
max = 0.001
"""


@pytest.fixture
def gate(pytester: pytest.Pytester) -> Path:
    return pytester.makefile(".toml", gate=TWO)


def _audit(run_audit, model: Path | str, *extra: str) -> pytest.RunResult:
    return run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA, *extra
    )


# -- problems seen before any work: usage errors, exit 4 ---------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audit", "missing.pt"], "*model file *missing.pt does not exist*"),
        (
            ["--audit", "demo", "--audit-data", "folder:nowhere"],
            "*data folder *nowhere does not exist*",
        ),
    ],
    ids=["model", "data"],
)
def test_missing_inputs_are_usage_errors_at_startup(
    pytester: pytest.Pytester, run_audit, gate: Path, args: list[str], message: str
) -> None:
    result = run_audit(*args, "--audit-suite", "gate.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*SegAudit: {message}"])
    assert not (pytester.path / "audit-report").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_usage_error(
    pytester: pytest.Pytester, run_audit, gate: Path
) -> None:
    result = run_audit("--audit", "--audit-suite", "gate.toml", "--audit-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*CUDA was requested but is not available here*"])


def test_a_model_that_does_not_load_makes_errors_not_failures(
    pytester: pytest.Pytester, run_audit, gate: Path
) -> None:
    broken = pytester.path / "broken.pt"
    broken.write_bytes(b"not a model at all")
    result = _audit(run_audit, broken)
    result.assert_outcomes(errors=2)
    record, _ = report_files(pytester.path / "audit-report")
    assert [c["verdict"] for c in record["claims"]] == ["error", "error"]
    assert "broken.pt" in record["claims"][0]["message"]


def test_a_broken_claim_is_a_failure(
    pytester: pytest.Pytester, run_audit, gate: Path, tiny_model: Path
) -> None:
    _audit(run_audit, tiny_model).assert_outcomes(passed=1, failed=1)


# -- --collect-only and runs of some claims ----------------------------------------------


def test_collect_only_writes_nothing(
    pytester: pytest.Pytester, run_audit, gate: Path, tiny_model: Path
) -> None:
    result = _audit(run_audit, tiny_model, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["gate::floor", "gate::ceiling"])
    assert not (pytester.path / "audit-report").exists()


@pytest.mark.parametrize("selection", [["-k", "floor"], ["-x"]], ids=["-k", "-x"])
def test_a_partial_run_keeps_the_complete_record(
    pytester: pytest.Pytester, run_audit, gate: Path, tiny_model: Path, selection: list[str]
) -> None:
    report = pytester.path / "audit-report"
    _audit(run_audit, tiny_model).assert_outcomes(passed=1, failed=1)
    complete = (report / "results.json").read_bytes()
    assert json.loads(complete)["complete"] is True

    result = _audit(run_audit, tiny_model, *selection)
    result.stdout.fnmatch_lines(["*a partial run: the complete record in *audit-report is kept*"])
    assert (report / "results.json").read_bytes() == complete
    record, _ = report_files(report / "partial")
    assert record["provenance"]["selection"]
    assert record["claims"][0]["nodeid"] == "gate::floor"


def test_a_partial_run_without_a_complete_record_writes_in_place(
    pytester: pytest.Pytester, run_audit, gate: Path, tiny_model: Path
) -> None:
    _audit(run_audit, tiny_model, "-k", "floor").assert_outcomes(passed=1, deselected=1)
    record, _ = report_files(pytester.path / "audit-report")
    assert [c["nodeid"] for c in record["claims"]] == ["gate::floor"]
    assert "1 claim(s) deselected" in record["provenance"]["selection"]
    assert not (pytester.path / "audit-report" / "partial").exists()


# -- the configured model -----------------------------------------------------------------


def test_a_bare_audit_uses_the_configured_model(
    pytester: pytest.Pytester, run_audit, gate: Path, tiny_model: Path
) -> None:
    pytester.makefile(".toml", audit=f'model = "{tiny_model}"\ndata = "{TINY_DATA}"\n')
    run_audit("--audit", "--audit-suite", "gate.toml").assert_outcomes(passed=1, failed=1)
    record, _ = report_files(pytester.path / "audit-report")
    assert record["provenance"]["model"]["path"] == str(tiny_model)


def test_demo_on_the_command_line_wins_over_the_configured_model(
    pytester: pytest.Pytester, run_audit, gate: Path
) -> None:
    pytester.makefile(".toml", audit='model = "missing.pt"\n')
    result = run_audit("--audit", "demo", "--audit-suite", "gate.toml", "--collect-only")
    assert result.ret == pytest.ExitCode.OK


# -- the table at the end -----------------------------------------------------------------


def test_terminal_summary_lists_every_claim(
    pytester: pytest.Pytester, run_audit, gate: Path, tiny_model: Path
) -> None:
    result = _audit(run_audit, tiny_model)
    result.stdout.fnmatch_lines(
        [
            "*claim*measured*interval*threshold*verdict*",
            "gate::floor *>= 0*PASS",
            "gate::ceiling *<= 0.001*FAIL",
        ]
    )


ENTRIES = [
    {
        "nodeid": "arnab2018::miou-under-ifgsm-linf-eps-8",
        "measured": 0.41234,
        "interval": {"low": 0.39, "high": 0.43},
        "threshold": {"min": 0.55, "max": None},
        "verdict": "failed",
    },
    {
        "nodeid": "smoke::clean",
        "measured": None,
        "interval": None,
        "threshold": {"min": None, "max": 0.2},
        "verdict": "not_run",
    },
]


def test_claims_table_columns_and_numbers() -> None:
    header, first, second = claims_table(ENTRIES, width=120)
    assert header.split() == ["claim", "measured", "interval", "threshold", "verdict"]
    assert first.split() == [
        "arnab2018::miou-under-ifgsm-linf-eps-8", "0.4123", "[0.39,", "0.43]", ">=", "0.55",
        "FAIL",
    ]  # fmt: skip
    assert second.split() == ["smoke::clean", "-", "<=", "0.2", "NOT", "RUN"]


def test_claims_table_stays_one_line_per_claim_on_a_narrow_terminal() -> None:
    lines = claims_table(ENTRIES, width=44)
    assert all(len(line) <= 44 for line in lines)
    assert "interval" not in lines[0] and "verdict" in lines[0]
    assert lines[1].startswith("…") and "FAIL" in lines[1]


def test_claims_table_shows_the_change_against_a_baseline() -> None:
    entries = [dict(ENTRIES[0], baseline={"delta": -0.14})]
    header, row = claims_table(entries, width=120)
    assert "delta" in header and "-0.14" in row


def test_failures_are_the_headline_when_claims_also_errored(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(
        ".toml",
        gate=TWO.replace('id = "floor"', 'id = "floor"\ntimeout = 1e-9'),
    )
    _audit(run_audit, tiny_model).assert_outcomes(failed=2)
    record, _ = report_files(pytester.path / "audit-report")
    verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
    assert verdicts == {"floor": "error", "ceiling": "failed"}
    assert record["status"] == "failed"

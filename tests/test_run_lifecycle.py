"""A run always ends with a valid record and, unless killed outright, an HTML report.

Each case builds its bad input itself: a model that crashes in forward, a suite that is not
UTF-8, a report folder that cannot be written, pickle trust switched on by a repo file.
The signal cases live in tests/test_signals.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.config import Settings
from audit.errors import ModelError, SegAuditError
from audit.model.failures import model_failure
from audit.record.writer import ensure_writable_dir
from audit.session import run_audit as run_audit_api
from conftest import TINY_DATA

CLEAN_SUITE = """
name = "gate"
[[claims]]
id = "miou"
kind = "clean"
metric = "miou"
min = 0.0
[[claims]]
id = "accuracy"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0
"""


class OneChannelNet(nn.Module):
    """A grey-scale model: its first convolution wants one channel, SegAudit feeds three."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ColourNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def record_of(report: Path) -> dict:
    return json.loads((report / "results.json").read_text())


def assert_record_and_report(report: Path) -> dict:
    """Both files are there; the record is finished (it says when) and schema-valid."""
    record = record_of(report)
    assert record["schema_version"] == 1
    assert record["status"] != "running"
    assert record["provenance"]["finished_at"]
    assert (report / "index.html").is_file()
    return record


def static_batch_export(path: Path) -> Path:
    torch.manual_seed(0)
    program = torch.export.export(ColourNet().eval(), (torch.rand(1, 3, 32, 64),))
    torch.export.save(program, path)
    return path


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(
            lambda p: static_batch_export(p / "static.pt2"),
            "was exported with a static batch size of 1: re-export it with a dynamic batch "
            "dimension*--audit-batch-size 1 (torch: *",
            id="export-static-batch",
        ),
        pytest.param(
            lambda p: save_torchscript_any(OneChannelNet(), p / "grey.pt", channels=1),
            "expects 1 input channels, but SegAudit feeds RGB images with 3*",
            id="torchscript-channels",
        ),
    ],
)
def test_model_crashing_in_forward_errors_each_claim_and_still_writes_the_report(
    pytester: pytest.Pytester, run_audit, build, expected: str
) -> None:
    model = build(pytester.path)
    pytester.makefile(".toml", gate=CLEAN_SUITE)
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # the full sentence in the failure section; the summary line starts with the same words
    result.stdout.fnmatch_lines([f"model '{model.name}' {expected}"])
    result.stdout.fnmatch_lines([f"FAILED gate::miou - model '{model.name}' *"])
    assert "INTERNALERROR" not in result.stdout.str()
    record = assert_record_and_report(pytester.path / "audit-report")
    assert record["complete"] is True and record["status"] == "error"
    for claim in record["claims"]:
        assert claim["verdict"] == "error"
        assert f"model '{model.name}'" in claim["message"] and "(torch: " in claim["message"]
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert model.name in html


def save_torchscript_any(module: nn.Module, path: Path, *, channels: int) -> Path:
    traced = torch.jit.trace(module.eval(), torch.rand(1, channels, 32, 64))
    torch.jit.save(traced, str(path))
    return path


def test_a_crash_in_the_api_run_is_recorded_too(tmp_path: Path) -> None:
    model = static_batch_export(tmp_path / "static.pt2")
    (tmp_path / "gate.toml").write_text(CLEAN_SUITE)
    record = run_audit_api(
        Settings(
            model=str(model),
            data=TINY_DATA,
            suites=(str(tmp_path / "gate.toml"),),
            report_dir=tmp_path / "report",
            base_dir=tmp_path,
            invocation_dir=tmp_path,
        )
    )
    assert record["status"] == "error"
    assert {c["verdict"] for c in record["claims"]} == {"error"}
    assert_record_and_report(tmp_path / "report")


def test_model_failure_without_a_known_cause_still_names_model_and_input() -> None:
    error = model_failure("m.pt", (2, 3, 8, 8), ValueError("boom\n  in layer4"))
    assert isinstance(error, ModelError)
    assert str(error) == (
        "model 'm.pt' failed on a batch of shape 2x3x8x8 (N x C x H x W, values in [0, 1]): "
        "ValueError: in layer4"
    )
    oom = model_failure("m.pt", (16, 3, 8, 8), RuntimeError("CUDA out of memory. Tried ..."))
    assert "ran out of memory on a batch of 16 images: lower --audit-batch-size" in str(oom)
    size = model_failure("m.pt", (1, 3, 8, 8), AssertionError("Guard failed: x.size()[3] == 64"))
    assert "was exported for a fixed input width of 64" in str(size)
    unlifted = RuntimeError("Expected input at *args[0].shape[2] to be equal to 32, but got 8.")
    assert "exported for a fixed input height of 32" in str(
        model_failure("m", (1, 3, 8, 8), unlifted)
    )


def test_non_utf8_suite_is_a_collection_error_naming_the_file(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    (pytester.path / "latin1.toml").write_bytes(
        'name = "gate"\n# café\n'.encode("latin-1") + CLEAN_SUITE.split("\n", 2)[2].encode()
    )
    result = run_audit("--audit", str(tiny_model), "--audit-suite", "latin1.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*latin1.toml: not UTF-8 text (byte 0xe9 on line 2, offset *): TOML files must be UTF-8*"]
    )
    assert "INTERNALERROR" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()
    record = assert_record_and_report(pytester.path / "audit-report")
    assert "latin1.toml: not UTF-8" in record["errors"][0]["message"]


def test_non_utf8_audit_toml_is_a_usage_error(pytester: pytest.Pytester, run_audit) -> None:
    (pytester.path / "audit.toml").write_bytes('data = "synth\xe9tic"\n'.encode("latin-1"))
    result = run_audit("--audit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*audit.toml: not UTF-8 text (byte 0xe9 on line 1*"])


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        # root writes through permission bits; sysfs refuses new files even to root
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("case", ["a-file", "under-a-file", "unwritable"])
def test_unusable_report_folder_is_a_usage_error_before_any_work(
    pytester: pytest.Pytester, run_audit, tiny_model: Path, case: str
) -> None:
    blocker = pytester.path / "blocker.txt"
    blocker.write_text("not a folder")
    target = {
        "a-file": blocker,
        "under-a-file": blocker / "report",
        "unwritable": _unwritable_dir(pytester.path),
    }[case]
    pytester.makefile(".toml", gate=CLEAN_SUITE)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", f"--audit-report={target}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = {
        "a-file": f"*--audit-report {target} is a file, not a folder*",
        "under-a-file": f"*--audit-report {target} cannot be created: {blocker} is a file*",
        "unwritable": f"*--audit-report {target} is not writable*",
    }[case]
    result.stderr.fnmatch_lines([expected])
    # nothing was computed, nothing written: no record anywhere
    assert not list(pytester.path.rglob("results.json"))
    assert blocker.read_text() == "not a folder"


def test_report_folder_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    ensure_writable_dir(tmp_path / "new" / "report")
    assert list((tmp_path / "new" / "report").iterdir()) == []
    with pytest.raises(SegAuditError, match="is a file, not a folder"):
        ensure_writable_dir(Path(__file__))


@pytest.mark.parametrize("where", ["pyproject", "audit.toml", "command line"])
def test_pickle_trust_and_its_source_are_recorded_and_shown(
    pytester: pytest.Pytester, run_audit, tiny_model: Path, where: str
) -> None:
    pytester.makefile(".toml", gate=CLEAN_SUITE)
    args = ["--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA]
    if where == "pyproject":
        pytester.makepyprojecttoml("[tool.segaudit]\ntrust_pickle = true\n")
    elif where == "audit.toml":
        (pytester.path / "audit.toml").write_text("trust_pickle = true\n")
    else:
        args.append("--audit-trust-pickle")
    result = run_audit(*args)
    assert result.ret == pytest.ExitCode.OK
    source = {
        "pyproject": str(pytester.path / "pyproject.toml"),
        "audit.toml": str(pytester.path / "audit.toml"),
        "command line": "command line",
    }[where]
    header = f"SegAudit: WARNING: trust_pickle is on (from {source})*"
    if where != "command line":
        header += "a file in the repository turned it on*"
    result.stdout.fnmatch_lines([header])
    record = assert_record_and_report(pytester.path / "audit-report")
    assert record["provenance"]["trust_pickle"] == {"enabled": True, "source": source}
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "Pickle trust was on:" in html and f"ON (from {source})" in html


def test_pickle_trust_off_is_recorded_without_a_warning(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN_SUITE)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    assert "trust_pickle is on" not in result.stdout.str()
    record = record_of(pytester.path / "audit-report")
    assert record["provenance"]["trust_pickle"] == {"enabled": False, "source": "default"}
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "Pickle trust: off" in html and "Pickle trust was on" not in html


def test_first_record_is_written_before_the_first_claim_runs(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN_SUITE)
    # A user test that runs before the claims reads what is on disk at that moment.
    pytester.makeconftest(
        """
        import json, pathlib, pytest
        SEEN = {}
        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_setup(item):
            if item.name == "miou":
                SEEN.update(json.loads(pathlib.Path("audit-report/results.json").read_text()))
        def pytest_sessionfinish(session):
            pathlib.Path("seen.json").write_text(json.dumps(SEEN))
        """
    )
    run_audit("--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA)
    seen = json.loads((pytester.path / "seen.json").read_text())
    assert seen["status"] == "running" and seen["complete"] is False
    assert [c["verdict"] for c in seen["claims"]] == ["not_run", "not_run"]
    assert seen["provenance"]["finished_at"] is None
    assert seen["provenance"]["trust_pickle"]["enabled"] is False

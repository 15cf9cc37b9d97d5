"""SIGTERM, SIGINT and SIGKILL at several points of a longer audit, in a real subprocess.

SIGTERM (what CI systems send on cancel or timeout) and SIGINT finish the record as
interrupted, render the report and exit non-zero.  SIGKILL leaves the partial record last
written, which is valid JSON that ``python -m audit.report`` renders.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import ColourNet, environment_outside_xdist

pytestmark = pytest.mark.slow

SLOW_MODELS = textwrap.dedent(
    """
    import time

    import torch
    from torch import nn


    class SlowNet(nn.Module):
        # per-pixel linear, and a pause per forward pass so the audit lasts a few seconds
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            time.sleep(0.15)
            return self.conv(x)


    def build():
        return SlowNet()
    """
)
# Every claim needs its own evaluation (noise at a new radius), so the run moves through
# claims and, inside each, through batches.
SUITE = "\n".join(
    f"""
[[claims]]
id = "noise-{i}"
kind = "attack"
attack = "noise"
norm = "linf"
eps = "{i}/255"
metric = "pixel_accuracy"
min = 0.0
"""
    for i in range(1, 7)
)
# The record is rewritten often, so a poll sees each point of the run.
FAST_PROGRESS = "import audit.session\naudit.session.PROGRESS_WRITE_INTERVAL_S = 0.05\n"

Point = Callable[[dict], bool]
POINTS: dict[str, Point] = {
    # the first record, written before the first claim starts
    "before-first-claim": lambda r: r["progress"].get("claims_done", 0) == 0,
    # inside the second claim's evaluation, some images done
    "mid-evaluation": lambda r: (
        r["progress"].get("claims_done", 0) >= 1
        and r["progress"].get("evaluation", {}).get("samples_done", 0) >= 2
    ),
    # after several claims have finished
    "later-claims": lambda r: r["progress"].get("claims_done", 0) >= 3,
}


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(ColourNet().state_dict(), tmp_path / "slow.pt")
    (tmp_path / "slowmodels.py").write_text(SLOW_MODELS)
    (tmp_path / "suite.toml").write_text('name = "long"\n' + SUITE)
    (tmp_path / "conftest.py").write_text(FAST_PROGRESS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


def start_audit(folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(folder)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "audit.plugin",
        "-p",
        "no:cacheprovider",
        "--audit",
        "slow.pt",
        "--audit-factory",
        "slowmodels:build",
        "--audit-suite",
        "suite.toml",
        "--audit-data",
        "synthetic?n=6&size=32x64",
        "--audit-batch-size",
        "1",
        "--audit-only",
    ]
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def wait_for(process: subprocess.Popen[bytes], record: Path, point: Point) -> dict:
    """Poll the partial record until it shows ``point`` (or fail with what it showed)."""
    deadline = time.monotonic() + 120
    last: dict = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"the audit ended (exit {process.returncode}) first:\n{output}")
        try:
            last = json.loads(record.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            # the record is written atomically, so only "not there yet" is expected here
            assert not record.exists(), "a half-written record was seen"
        else:
            if point(last):
                return last
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"the run never reached the point; last record: {last.get('progress')}")


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_terminate_or_interrupt_finishes_record_and_report(
    audit_dir: Path, signum: signal.Signals, point: str
) -> None:
    report = audit_dir / "audit-report"
    process = start_audit(audit_dir)
    wait_for(process, report / "results.json", POINTS[point])
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    record = json.loads((report / "results.json").read_text())
    assert record["complete"] is False
    assert record["status"] in ("incomplete", "error", "failed")  # finished, not "running"
    assert record["provenance"]["finished_at"]
    name = signal.Signals(signum).name
    assert record["reason"].startswith(f"the run was stopped early by {name}")
    verdicts = [c["verdict"] for c in record["claims"]]
    assert len(verdicts) == 6 and verdicts[-1] == "not_run"
    assert "passed" in verdicts or point == "before-first-claim"
    interrupted = [c for c in record["claims"] if c["message"].startswith("interrupted by")]
    assert all(c["message"].startswith(f"interrupted by {name} after") for c in interrupted)
    html = (report / "index.html").read_text()
    assert "This audit did not complete" in html and f"stopped early by {name}" in html
    assert "audit report:" in output


@pytest.mark.parametrize("point", ["before-first-claim", "mid-evaluation"])
def test_sigkill_leaves_a_valid_partial_record_that_renders(audit_dir: Path, point: str) -> None:
    report = audit_dir / "audit-report"
    process = start_audit(audit_dir)
    seen = wait_for(process, report / "results.json", POINTS[point])
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    record = json.loads((report / "results.json").read_text())
    assert record["status"] == "running" and record["complete"] is False
    assert record["provenance"]["finished_at"] is None
    assert record["progress"]["claims_done"] >= seen["progress"]["claims_done"]
    assert record["progress"]["claims_total"] == 6
    assert len(record["claims"]) == 6
    (report / "index.html").unlink(missing_ok=True)
    rendered = subprocess.run(
        [sys.executable, "-m", "audit.report", str(report)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    html = (report / "index.html").read_text()
    assert "DID NOT FINISH" in html
    assert "the process ended without finishing its record" in html
    if point == "mid-evaluation":
        assert "while claim long::noise-" in html and "images of its current evaluation" in html


CONVERTING_MODELS = textwrap.dedent(
    """
    import os
    import signal

    import torch
    from torch import nn


    class Net(nn.Module):
        # A library that catches everything: the SIGTERM arrives inside it and comes out
        # as an ordinary error (convert) or not at all (swallow).
        mode = "convert"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except BaseException as exc:
                if Net.mode == "convert":
                    raise RuntimeError(f"C++ op failed: {exc!r}") from None
            return self.conv(x)


    def build():
        return Net()
    """
)


@pytest.mark.parametrize("mode", ["convert", "swallow"])
def test_an_interrupt_a_library_converts_or_swallows_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from audit.config import Settings
    from audit.session import run_audit

    (tmp_path / "catchall.py").write_text(CONVERTING_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import catchall

    monkeypatch.setattr(catchall.Net, "mode", mode)
    torch.save(ColourNet().state_dict(), tmp_path / "m.pt")
    (tmp_path / "suite.toml").write_text('name = "long"\n' + SUITE)
    settings = Settings(
        model=str(tmp_path / "m.pt"),
        factory="catchall:build",
        data="synthetic?n=2&size=32x64",
        suites=(str(tmp_path / "suite.toml"),),
        report_dir=tmp_path / "report",
        base_dir=tmp_path,
        invocation_dir=tmp_path,
    )
    with pytest.raises(KeyboardInterrupt):
        run_audit(settings)
    record = json.loads((tmp_path / "report" / "results.json").read_text())
    assert record["reason"].startswith("the run was stopped early by SIGTERM")
    verdicts = [c["verdict"] for c in record["claims"]]
    # converted: the first claim stops; swallowed: the first claim ends, the next one stops
    assert verdicts == ["passed" if mode == "swallow" else "not_run"] + ["not_run"] * 5
    assert "error" not in verdicts
    assert (tmp_path / "report" / "index.html").is_file()


def test_terminating_a_torchrun_job_finishes_rank_0s_record_and_report(audit_dir: Path) -> None:
    """torchrun forwards SIGTERM to every rank: rank 0 still writes the record and report,
    and no rank waits for the others in a collective."""
    report = audit_dir / "audit-report"
    env = {
        **environment_outside_xdist(),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONPATH": str(audit_dir),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "pytest", "-p", "audit.plugin", "-p", "no:cacheprovider", "--audit", "slow.pt",
         "--audit-factory", "slowmodels:build", "--audit-suite", "suite.toml", "--audit-data",
         "synthetic?n=6&size=32x64", "--audit-batch-size", "1", "--audit-only"],
        cwd=audit_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for(process, report / "results.json", POINTS["later-claims"])
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode != 0 and time.monotonic() - start < 60, output
    record = json.loads((report / "results.json").read_text())
    assert record["complete"] is False and record["provenance"]["finished_at"]
    assert record["reason"].startswith("the run was stopped early by SIGTERM"), output
    assert record["provenance"]["distributed"]["world_size"] == 2
    assert "This audit did not complete" in (report / "index.html").read_text()

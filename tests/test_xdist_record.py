"""``pytest -n 2``: the workers' evaluations reach the record, which equals a serial run's
apart from timings and from which process happened to compute what."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from audit.record.merge import finish_merge, merge_worker
from audit.record.writer import RunRecorder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from compare_records import differences, normalise  # noqa: E402

SUITE = """
name = "spread"

[[claims]]
id = "clean"
kind = "clean"
metric = "miou"
min = 0.0

[[claims]]
id = "fgsm"
kind = "attack"
attack = "fgsm"
norm = "linf"
eps = ["2/255", "8/255"]
metric = "iou_ratio"
min = 0.0

[[claims]]
id = "ifgsm"
kind = "attack"
attack = "ifgsm"
norm = "linf"
eps = ["2/255", "8/255"]
metric = "iou_ratio"
min = 0.0

[[claims]]
id = "bound"
kind = "lipschitz"
max = 1e6

[[claims]]
id = "certified"
kind = "certified"
norm = "l2"
eps = ["0.01", "0.02"]
metric = "certified_pixel_accuracy"
min = 0.0

[[claims]]
id = "noise"
kind = "corruption"
corruption = "gaussian_noise"
severity = [1, 3]
metric = "miou"
min = 0.0
"""
#: what differs by which process computed an evaluation, not by what it measured: how many
#: claims shared it and how many passes its process made (a worker may recompute a grid
#: point another worker also needed)
PROCESS_BOUND = frozenset(
    {"shared_by", "forward_passes", "backward_passes", "libraries", "progress"}
)


def _run(folder: Path, model: Path, *extra: str) -> dict[str, Any]:
    folder.mkdir()
    (folder / "spread.toml").write_text(SUITE)
    (folder / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "audit.plugin", "-p", "no:cacheprovider", "-q",
         "--audit", str(model), "--audit-suite", "spread.toml", "--audit-seed", "3",
         "--audit-data", "synthetic?n=4&size=32x64", *extra],
        cwd=folder, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((folder / "audit-report" / "results.json").read_text())


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in PROCESS_BOUND}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(record)
    for key, value in out["evaluations"].items():
        if isinstance(value, list):
            out["evaluations"][key] = sorted(value, key=lambda e: str(e.get("id", e)))
    # the command line differs (-n 2) and is dropped by the comparison
    return out


@pytest.mark.slow
def test_two_workers_leave_the_record_a_serial_run_leaves(tmp_path: Path, tiny_model: Path) -> None:
    serial = _run(tmp_path / "serial", tiny_model)
    spread = _run(tmp_path / "xdist", tiny_model, "-p", "xdist", "-n", "2")
    assert set(spread["evaluations"]) == set(serial["evaluations"]) >= {
        "clean", "attacks", "certificates", "corruptions", "corruption_summary",
    }  # fmt: skip
    assert spread["provenance"]["model"]["sha256"] == serial["provenance"]["model"]["sha256"]
    problems = list(differences(normalise(_comparable(serial)), normalise(_comparable(spread))))
    assert not problems, "\n".join(problems[:20])
    # the report draws every section the serial one draws
    page = (tmp_path / "xdist" / "audit-report" / "index.html").read_text()
    for section in ("clean", "attacks", "certificates", "corruptions"):
        assert f'<section id="{section}"' in page
    manifest = (tmp_path / "xdist" / "audit-report" / "manifest.sha256").read_text()
    assert "suites/spread.toml" in manifest


def test_merging_keeps_each_evaluation_once_and_derives_diagnostics_again() -> None:
    recorder = RunRecorder()

    def attack(attack: str, family: str, eps: float, miou: float) -> dict[str, Any]:
        return {
            "id": f"{attack}-{eps}", "attack": attack, "family": family, "norm": "linf",
            "eps": eps, "eps_text": f"{eps:g}", "metrics": {"miou": miou},
        }  # fmt: skip

    first = {
        "provenance": {"device": "cpu", "model": {"sha256": "a" * 64}},
        "evaluations": {
            "clean": {"metrics": {"miou": 0.8}},
            "attacks": [attack("fgsm", "single_step", 0.1, 0.4)],
        },
    }
    second = {
        "provenance": {"device": "cpu"},
        "evaluations": {
            "clean": {"metrics": {"miou": 0.8}},
            "attacks": [
                attack("ifgsm", "iterative", 0.1, 0.6),  # weaker than one step: flagged
                attack("fgsm", "single_step", 0.1, 0.4),  # computed by both workers
            ],
        },
        "errors": [{"where": "examples", "message": "disk full"}],
    }
    merge_worker(recorder, second)
    merge_worker(recorder, first)
    finish_merge(recorder)
    assert [a["id"] for a in recorder.evaluations["attacks"]] == ["fgsm-0.1", "ifgsm-0.1"]
    assert recorder.provenance["model"] == {"sha256": "a" * 64}
    assert [d["check"] for d in recorder.diagnostics] == ["iterative_weaker"]
    assert recorder.diagnostic_coverage["iterative_weaker"]["status"] == "flagged"
    assert recorder.errors == [{"where": "examples", "message": "disk full"}]


def test_workers_spread_over_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from audit.devices import worker_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cuda = torch.device("cuda")
    assert worker_device(cuda, "gw5") == torch.device("cuda", 1)
    assert worker_device(cuda, "gw0") == torch.device("cuda", 0)
    # an explicit index, another device, or no worker: kept as given
    assert worker_device(torch.device("cuda", 2), "gw5") == torch.device("cuda", 2)
    assert worker_device(torch.device("cpu"), "gw5") == torch.device("cpu")
    assert worker_device(cuda, None) == cuda
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_device(cuda, "gw5") == cuda

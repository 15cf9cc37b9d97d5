"""Progress of long evaluations on the terminal, and the evaluation cache across runs."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.config import resolve_settings
from audit.errors import ConfigError
from audit.evaluations.clean import CleanEvaluation, Example
from audit.evaluations.corruption import CorruptionSearch
from audit.progress import ProgressDisplay, is_rank_zero, resolve_mode
from audit.store import EvaluationStore, Unstorable, decode, encode
from audit.threat import Epsilon, ThreatModel
from conftest import TINY_DATA, ColourNet, save_torchscript

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

CLEAN = """
name = "gate"
[[claims]]
id = "miou"
kind = "clean"
metric = "miou"
min = 0.0
"""
ATTACK = """
[[claims]]
id = "fgsm"
kind = "attack"
attack = "fgsm"
norm = "linf"
eps = "{eps}"
metric = "miou"
min = 0.0
"""


# -- progress ------------------------------------------------------------------------------
class Lines:
    """An Output that keeps its lines; no terminal."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.buffer = io.StringIO()

    def line(self, text: str) -> None:
        self.lines.append(text)

    def stream(self) -> io.StringIO:
        return self.buffer

    def isatty(self) -> bool:
        return False


def test_lines_come_every_tenth_and_every_interval() -> None:
    now = [0.0]
    out = Lines()
    display = ProgressDisplay("lines", out, clock=lambda: now[0])
    for done in range(0, 101, 5):
        display.update({"evaluation": "attack pgd", "samples_done": done, "samples_total": 100})
    assert [line.split(": ", 2)[2].split(" images")[0] for line in out.lines] == [
        f"{n}/100" for n in range(0, 101, 10)
    ]
    assert out.lines[0].startswith("SegAudit: attack pgd: 0/100 images (0%)")
    # a long batch: steps move, images do not; a line per interval keeps the log alive
    out.lines.clear()
    display.update({"evaluation": "slow", "samples_done": 0, "samples_total": 10})
    for t in (10.0, 29.0, 31.0, 45.0, 62.0):
        now[0] = t
        display.update({"evaluation": "slow", "samples_done": 0, "samples_total": 10})
    assert len(out.lines) == 3  # at 0 s, 31 s and 62 s


def test_bar_mode_draws_with_tqdm_and_clears_when_done() -> None:
    out = Lines()
    display = ProgressDisplay("bar", out)
    display.update({"evaluation": "clean", "samples_done": 0, "samples_total": 4})
    display.update({"evaluation": "clean", "samples_done": 2, "samples_total": 4, "steps_done": 1})
    display.update({"evaluation": "clean", "samples_done": 4, "samples_total": 4})
    assert "SegAudit: clean" in out.buffer.getvalue() and "/4" in out.buffer.getvalue()
    assert display._bar is None and not out.lines


def test_modes_resolve_by_terminal_quietness_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_mode("auto", isatty=True) == "bar"
    assert resolve_mode("auto", isatty=False) == "lines"
    assert resolve_mode("auto", isatty=True, verbosity=-2) == "off"
    assert resolve_mode("lines", isatty=False, verbosity=-2) == "lines"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_rank_zero() and resolve_mode("bar", isatty=True) == "off"
    monkeypatch.setenv("RANK", "0")  # the global rank decides
    assert is_rank_zero()
    assert not is_rank_zero({"RANK": "3", "LOCAL_RANK": "0"})


def test_progress_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'progress': expected auto, bar, lines, off"):
        resolve_settings(rootdir=tmp_path, cli={"progress": "fancy"}, invocation_dir=tmp_path)
    (tmp_path / "audit.toml").write_text('progress = "off"\ncache = "kept"\n')
    s = resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path / "sub")
    assert s.progress == "off" and s.cache_dir == (tmp_path / "kept").resolve()
    s = resolve_settings(rootdir=tmp_path, cli={"cache_dir": "none"}, invocation_dir=tmp_path)
    assert s.cache_dir is None


def _gate(run_audit, model: Path, *extra: str) -> pytest.RunResult:
    return run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA, *extra
    )


def test_lines_name_the_evaluation_and_the_images_and_off_prints_none(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN + ATTACK.format(eps="4/255"))
    lines = _gate(run_audit, tiny_model, "--audit-progress", "lines", "--audit-report", "a")
    assert lines.ret == pytest.ExitCode.OK
    lines.stdout.fnmatch_lines(
        [
            "SegAudit: clean: 0/4 images (0%)*",
            "SegAudit: clean: 4/4 images (100%)*",
            "SegAudit: attack fgsm linf eps=4/255: 4/4 images (100%)*",
            "SegAudit: summarising the evaluations for the report",
            # the noise baseline the report draws, computed after the last claim
            "SegAudit: attack noise linf eps=4/255: 4/4 images*",
            "SegAudit: summaries done in * s",
        ]
    )
    off = _gate(run_audit, tiny_model, "--audit-progress", "off", "--audit-report", "b")
    assert off.ret == pytest.ExitCode.OK
    assert "SegAudit: clean" not in off.stdout.str() and "summaris" not in off.stdout.str()
    # the record is the same either way (timings and paths apart)
    a, b = (json.loads((pytester.path / d / "results.json").read_text()) for d in "ab")
    assert [(c["nodeid"], c["measured"]) for c in a["claims"]] == [
        (c["nodeid"], c["measured"]) for c in b["claims"]
    ]
    assert a["evaluations"]["attacks"][0]["metrics"] == b["evaluations"]["attacks"][0]["metrics"]


# -- the codec -----------------------------------------------------------------------------
def test_codec_round_trips_results_with_examples_and_narrows_label_maps() -> None:
    mask = np.full((64, 128), 255, dtype=np.int64)
    mask[:10] = 3
    example = Example("img", np.zeros((64, 128, 3), np.uint8), mask, mask.copy(), float("nan"))
    clean = CleanEvaluation(
        torch.arange(32, dtype=torch.int64).view(2, 4, 4),
        ("a", "b"),
        ((64, 128), (64, 128)),
        (example,),
        object_sizes=None,
    )
    tree, tensors = encode({"clean": clean, ("x", 1): ThreatModel("linf", Epsilon(0.1, "0.1"))})
    assert tensors["1"].dtype == torch.uint8  # the mask, losslessly smaller
    back = decode(json.loads(json.dumps(tree)), tensors)
    got = back["clean"]
    assert torch.equal(got.per_image, clean.per_image) and got.sample_names == ("a", "b")
    assert got.examples[0].mask.dtype == np.int64 and (got.examples[0].mask == mask).all()
    assert np.isnan(got.examples[0].pixel_accuracy)
    assert back[("x", 1)] == ThreatModel("linf", Epsilon(0.1, "0.1"))
    with pytest.raises(Unstorable):  # a search replays Hypothesis' database: not stored
        encode(CorruptionSearch({}, 0, None, None, None, None, 0, 0, 0.0))  # type: ignore[arg-type]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "pickle"])
def test_a_bad_entry_is_a_miss_with_a_warning(tmp_path: Path, damage: str) -> None:
    warnings: list[str] = []
    store = EvaluationStore(tmp_path, {"model": "m"}, on_problem=warnings.append)
    parts = {"evaluation": "x", "params": {"a": 1}}
    assert store.save(parts, ThreatModel("l2", Epsilon(0.5, "0.5")))
    path = store.path(store.key(parts))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip")
    elif damage == "foreign":
        # another key's entry copied over this one: its parts do not match
        other = {"evaluation": "x", "params": {"a": 2}}
        store.save(other, ThreatModel("l2", Epsilon(9.0, "9")))
        path.write_bytes(store.path(store.key(other)).read_bytes())
    else:
        # an arbitrary pickled object: weights_only refuses to build it
        torch.save({"format": 1, "evil": Path("/")}, path)
    assert store.load(parts) == (False, None)
    assert len(warnings) == 1 and "is unusable" in warnings[0] and str(path) in warnings[0]
    assert store.problems == warnings


# -- the cache across runs -----------------------------------------------------------------
def _record(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_second_run_with_one_more_claim_computes_only_the_new_evaluation(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    suite = CLEAN + ATTACK.format(eps="4/255")
    pytester.makefile(".toml", gate=suite)
    first = _gate(run_audit, tiny_model, "--audit-cache", "kept", "--audit-report", "one")
    assert first.ret == pytest.ExitCode.OK
    one = _record(pytester.path / "one")
    computed = {(c["evaluation"], json.dumps(c["params"])) for c in one["cache"]["computed"]}
    assert {e for e, _ in computed} == {"clean", "attack"}  # the claims' and the noise baseline
    assert one["cache"]["reused"] == []
    assert list((pytester.path / "kept").rglob("*.pt"))

    more = ATTACK.replace('id = "fgsm"', 'id = "fgsm8"').format(eps="8/255")
    pytester.makefile(".toml", gate=suite + more)
    second = _gate(run_audit, tiny_model, "--audit-cache", "kept", "--audit-report", "two")
    assert second.ret == pytest.ExitCode.OK
    two = _record(pytester.path / "two")
    new = [(c["evaluation"], c["params"]["eps"]) for c in two["cache"]["computed"]]
    # the new claim's attack and its noise baseline, nothing else
    assert sorted(new) == [("attack", pytest.approx(8 / 255))] * 2
    assert {json.dumps(c["params"]) for c in two["cache"]["reused"]} >= {
        p for e, p in computed if e == "clean"
    }
    assert two["cache"]["warnings"] == []
    measured = {c["nodeid"]: c["measured"] for c in two["claims"]}
    for claim in one["claims"]:
        assert measured[claim["nodeid"]] == claim["measured"]
    # the reused attack summarises as the computed one did (timings apart)
    a, b = one["evaluations"]["attacks"][0], two["evaluations"]["attacks"][0]
    assert a["metrics"] == b["metrics"] and a["perturbation"] == b["perturbation"]


def test_corrupt_cache_files_are_recomputed_with_a_warning(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN)
    assert _gate(run_audit, tiny_model, "--audit-cache", "kept").ret == pytest.ExitCode.OK
    entries = list((pytester.path / "kept").rglob("*.pt"))
    for path in entries:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    result = _gate(run_audit, tiny_model, "--audit-cache", "kept", "--audit-progress", "off")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["SegAudit: warning: cache entry * is unusable (*); recomputing it"]
    )
    record = _record(pytester.path / "audit-report")
    assert record["status"] == "passed" and record["errors"] == []
    assert len(record["cache"]["warnings"]) == len(entries) and record["cache"]["reused"] == []
    # rewritten whole: a third run reuses them
    third = _gate(run_audit, tiny_model, "--audit-cache", "kept")
    assert "warning: cache entry" not in third.stdout.str()
    assert _record(pytester.path / "audit-report")["cache"]["computed"] == []


def test_another_model_file_never_reuses(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN)
    assert _gate(run_audit, tiny_model, "--audit-cache", "kept").ret == pytest.ExitCode.OK
    torch.manual_seed(1)
    other = save_torchscript(ColourNet(scale=2.0), pytester.path / "other.pt", {"num_classes": 8})
    assert _gate(run_audit, other, "--audit-cache", "kept").ret == pytest.ExitCode.OK
    record = _record(pytester.path / "audit-report")
    assert record["cache"]["reused"] == [] and record["cache"]["computed"]
    assert (
        record["provenance"]["model"]["sha256"]
        != hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    )


def test_unwritable_cache_folder_is_a_usage_error(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN)
    (pytester.path / "blocker").write_text("a file")
    result = _gate(run_audit, tiny_model, "--audit-cache", "blocker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--audit-cache *blocker is a file, not a folder*"])

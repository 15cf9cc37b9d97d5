"""``torchrun --nproc-per-node 2 -m pytest --audit``: two ranks, each over its shard, leave
the record one process leaves; a rank without images, a rank that fails, and the pieces
(shard split, the exchange's messages, merges) on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audit.distributed import Outcome, split_batches
from audit.errors import ClaimTimeout, ConfigError, EvaluationError, ThreatOutOfRange

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from compare_records import differences, normalise  # noqa: E402

from conftest import environment_outside_xdist  # noqa: E402

#: every kind of evaluation that runs over the dataset's batches
SUITE = """
name = "ranks"

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
id = "pgd"
kind = "attack"
attack = "pgd"
norm = "l2"
eps = 0.1
steps = 3
metric = "miou"
min = 0.0

[[claims]]
id = "radius"
kind = "min_norm"
attack = "advlib:pdgd"
norm = "l2"
steps = 5
quantile = 0.5
min = 0.0

[[claims]]
id = "certified"
kind = "certified"
certifier = "lipschitz"
norm = "l2"
eps = [0.02, 0.05]
metric = "certified_pixel_accuracy"
min = 0.0

[[claims]]
id = "certified-miou"
kind = "certified"
certifier = "lipschitz"
norm = "l2"
eps = 0.05
metric = "certified_miou"
min = 0.0

[[claims]]
id = "smoothing"
kind = "certified"
certifier = "smoothing"
norm = "l2"
eps = 0.05
sigma = 0.25
n = 60
n0 = 5
metric = "certified_pixel_accuracy"
min = 0.0

[[claims]]
id = "sound"
kind = "certificate_soundness"
certifier = "lipschitz"
norm = "l2"
eps = 0.05
attacks = ["pgd", "advlib:pdpgd"]
steps = 3
min_norm_steps = 5

[[claims]]
id = "noise"
kind = "corruption"
corruption = "gaussian_noise"
severity = 2
metric = "miou"
min = 0.0
"""
#: what a torchrun job changes by nature: its ranks, and the threads torchrun gives each
LAUNCH_BOUND = frozenset({"distributed", "torch_threads"})


def _pytest(folder: Path, *args: str, ranks: int = 0, env: dict[str, str] | None = None):
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.run(
        [sys.executable, *(launcher if ranks else []), "-m", "pytest", "-p", "audit.plugin",
         "-p", "no:cacheprovider", "-q", *args],
        cwd=folder, capture_output=True, text=True, timeout=600,
        env={**environment_outside_xdist(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})},
    )  # fmt: skip


def _audit(folder: Path, suite: str, data: str, batch: int, ranks: int = 0) -> dict[str, Any]:
    folder.mkdir()
    (folder / "ranks.toml").write_text(suite)
    (folder / "pytest.ini").write_text("[pytest]\n")
    done = _pytest(
        folder, "--audit", "--audit-suite", "ranks.toml", "--audit-data", data,
        "--audit-batch-size", str(batch), ranks=ranks,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((folder / "audit-report" / "results.json").read_text())


def _comparable(record: dict[str, Any]) -> Any:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in LAUNCH_BOUND}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return normalise(strip(record))


@pytest.mark.slow
def test_two_ranks_leave_the_record_one_process_leaves(tmp_path: Path) -> None:
    # 5 images in batches of 2: 3 batches, split 2 + 3 images
    data = "synthetic?n=5&size=64x128"
    alone = _audit(tmp_path / "alone", SUITE, data, batch=2)
    ranks = _audit(tmp_path / "ranks", SUITE, data, batch=2, ranks=2)
    assert ranks["provenance"]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "shards": [{"rank": 0, "start": 0, "stop": 2}, {"rank": 1, "start": 2, "stop": 5}],
    }
    assert {c["verdict"] for c in ranks["claims"]} == {"passed"}
    # bit for bit: every measured value, interval, evaluation (forward passes included, so
    # no image was evaluated twice) and diagnostic
    problems = list(differences(_comparable(alone), _comparable(ranks)))
    assert not problems, "\n".join(problems[:20])
    assert len(ranks["evaluations"]["attacks"]) >= 3 and ranks["evaluations"]["certificates"]
    # rank 0 alone wrote the report folder; rank 1's scratch folder is gone
    page = (tmp_path / "ranks" / "audit-report" / "index.html").read_text()
    assert "2 torchrun ranks over gloo (rank 0: images 0 to 2, rank 1: images 2 to 5" in page
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("segaudit-rank1-*"))


@pytest.mark.slow
def test_a_rank_without_images_takes_part_and_adds_nothing(tmp_path: Path) -> None:
    suite = SUITE.split('[[claims]]\nid = "radius"')[0]  # clean, fgsm and pgd
    alone = _audit(tmp_path / "alone", suite, "synthetic?n=3&size=64x128", batch=4)
    ranks = _audit(tmp_path / "ranks", suite, "synthetic?n=3&size=64x128", batch=4, ranks=2)
    shards = ranks["provenance"]["distributed"]["shards"]
    # one batch: rank 1 has nothing
    assert shards == [{"rank": 0, "start": 0, "stop": 3}, {"rank": 1, "start": 0, "stop": 0}]
    problems = list(differences(_comparable(alone), _comparable(ranks)))
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_ranks_reuse_the_cache_rank_0_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "cached"
    folder.mkdir()
    (folder / "ranks.toml").write_text(SUITE.split('[[claims]]\nid = "pgd"')[0])
    (folder / "pytest.ini").write_text("[pytest]\n")
    args = ("--audit", "--audit-suite", "ranks.toml", "--audit-data", "synthetic?n=3&size=64x128",
            "--audit-batch-size", "1", "--audit-cache", "cache")  # fmt: skip
    records = []
    for _ in range(2):
        done = _pytest(folder, *args, ranks=2)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        records.append(json.loads((folder / "audit-report" / "results.json").read_text()))
    first, second = (r["cache"] for r in records)
    assert first["computed"] and not first["reused"]
    # rank 0 read every entry and handed it on: nothing computed again, on any rank
    assert not second["computed"] and len(second["reused"]) == len(first["computed"])
    assert len(list((folder / "cache").rglob("*.pt"))) == len(first["computed"])
    assert [c["measured"] for c in records[0]["claims"]] == [
        c["measured"] for c in records[1]["claims"]
    ]


FAILING_FACTORY = """
import os
import torch.nn as nn


def build():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 cannot build the model (test)")
    return nn.Conv2d(3, 8, 3, padding=1)
"""


@pytest.mark.slow
def test_a_rank_that_cannot_load_fails_every_rank_without_waiting(tmp_path: Path) -> None:
    (tmp_path / "ranked.py").write_text(FAILING_FACTORY)
    torch.save(torch.nn.Conv2d(3, 8, 3, padding=1).state_dict(), tmp_path / "weights.pth")
    (tmp_path / "ranks.toml").write_text(SUITE.split('[[claims]]\nid = "fgsm"')[0])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    start = time.monotonic()
    done = _pytest(
        tmp_path, "--audit", "weights.pth", "--audit-factory", "ranked:build",
        "--audit-suite", "ranks.toml", "--audit-data", "synthetic?n=2&size=64x128",
        ranks=2, env={"PYTHONPATH": str(tmp_path), "SEGAUDIT_DIST_TIMEOUT": "120"},
    )  # fmt: skip
    assert done.returncode != 0
    assert time.monotonic() - start < 100  # failed, not timed out
    record = json.loads((tmp_path / "audit-report" / "results.json").read_text())
    (claim,) = record["claims"]
    assert claim["verdict"] == "error"
    assert "rank 1 of 2 failed to load the model and data" in claim["message"]
    assert "rank 1 cannot build the model (test)" in claim["message"]


# -- the pieces ---------------------------------------------------------------------------------
@given(
    sizes=st.lists(st.integers(1, 8), min_size=0, max_size=30),
    world=st.integers(1, 9),
)
def test_shards_are_contiguous_cover_every_batch_once_and_balance(
    sizes: list[int], world: int
) -> None:
    shards = split_batches(sizes, world)
    assert len(shards) == world
    assert [b for shard in shards for b in shard] == list(range(len(sizes)))
    # each boundary is within half a batch of the even split: a rank's images are within
    # one batch of an even share
    share = sum(sizes) / world
    for shard in shards:
        images = sum(sizes[b] for b in shard)
        assert abs(images - share) <= max(sizes, default=0) + 1e-9
    # rank 0 always runs the model (the first batch): it records what its output looked like
    assert not sizes or 0 in shards[0]


def test_an_outcome_travels_as_weights_only_bytes() -> None:
    from audit.evaluations import CleanEvaluation

    clean = CleanEvaluation(
        per_image=torch.arange(8).reshape(2, 2, 2),
        sample_names=("a", "b"),
        resolutions=((4, 4), (4, 4)),
    )
    back = Outcome.from_bytes(Outcome("ok", clean).to_bytes("key-1"))
    assert back.key == "key-1" and back.status == "ok"
    assert torch.equal(back.value.per_image, clean.per_image)
    assert back.value.sample_names == ("a", "b")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ThreatOutOfRange("radius 9 beyond the image"), ThreatOutOfRange),
        (ConfigError("tau too large", key="tau"), ConfigError),
        (RuntimeError("CUDA kernel failed"), EvaluationError),
    ],
)
def test_a_failure_is_raised_on_every_rank_naming_the_rank(
    raised: Exception, expected: type
) -> None:
    outcome = Outcome.from_bytes(Outcome.failed(raised).to_bytes("k"))
    exc = outcome.exception(1, "images 4-7")
    assert type(exc) is expected
    assert "on rank 1 (images 4-7)" in str(exc) and str(raised) in str(exc)


def test_a_timeout_on_one_rank_is_a_timeout_on_every_rank() -> None:
    timeout = ClaimTimeout("ran past 5 s", budget_s=5.0, elapsed_s=6.5, progress={"images": 3})
    exc = Outcome.from_bytes(Outcome.failed(timeout).to_bytes("k")).exception(0, "images 0-3")
    assert isinstance(exc, ClaimTimeout)
    assert (exc.budget_s, exc.elapsed_s, exc.progress) == (5.0, 6.5, {"images": 3})


def _soundness(counterexample: dict[str, Any] | None, certified: int, points: int) -> Any:
    import numpy as np

    from audit.evaluations import AttackCheck, SoundnessResult

    check = AttackCheck(
        "pgd", certified_pixels=certified, flipped_certified=int(counterexample is not None),
        max_norm=0.1 * certified, scatter=[(float(i), 1.0) for i in range(points)],
        tightness=[0.5] * points,
    )  # fmt: skip
    artifacts = {"input": np.zeros(3)} if counterexample else {}
    return SoundnessResult(0.1, None, (check,), counterexample, artifacts, None, 2, 1.0)


def test_soundness_shards_sum_and_keep_the_first_counterexample_in_image_order() -> None:
    from audit.evaluations.shards import merge_soundness
    from audit.evaluations.soundness import SCATTER_POINTS

    first = {"sample": "synthetic-000003", "pixel": [1, 2]}
    later = {"sample": "synthetic-000006", "pixel": [0, 0]}
    parts = [_soundness(None, 5, 1500), _soundness(first, 7, 1500), _soundness(later, 1, 10)]
    merged = merge_soundness(parts, engine=None)
    (check,) = merged.checks
    assert (check.certified_pixels, check.flipped_certified) == (13, 2)
    assert check.max_norm == pytest.approx(0.7)
    assert merged.counterexample == first and "input" in merged.artifacts
    assert merged.num_samples == 6
    # the scatter is the prefix one process keeps, the tightness every ratio
    assert len(check.scatter) == SCATTER_POINTS and check.scatter[1500] == (0.0, 1.0)
    assert len(check.tightness) == 3010


def test_attack_shards_keep_the_examples_one_process_keeps() -> None:
    from types import SimpleNamespace

    from audit.evaluations.shards import worst_examples

    # the worst accuracies, an earlier image first on a tie
    ranks = [
        SimpleNamespace(examples=(SimpleNamespace(name="a", pixel_accuracy_adv=0.2),)),
        SimpleNamespace(
            examples=(
                SimpleNamespace(name="b", pixel_accuracy_adv=0.1),
                SimpleNamespace(name="c", pixel_accuracy_adv=0.2),
            )
        ),
    ]
    assert [e.name for e in worst_examples(ranks, 3)] == ["b", "a", "c"]
    assert [e.name for e in worst_examples(ranks, 2)] == ["b", "a"]


def test_one_rank_group_exchanges_bytes_and_reports_a_result_it_cannot_send(
    tmp_path: Path,
) -> None:
    import torch.distributed as dist

    from audit.distributed import Ranks

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ranks = Ranks(rank=0, world_size=1, local_rank=0, backend="gloo", timeout_s=60.0)
        assert ranks.all_bytes(b"abc") == [b"abc"] and ranks.rank0_bytes(b"xyz") == b"xyz"
        assert ranks.all_bytes(b"") == [b""]
        # a result the codec cannot carry travels as an error, not as a hang elsewhere
        (reply,) = ranks.exchange("key-1", Outcome("ok", object()))
        assert reply.status == "error" and reply.key == "key-1"
        assert "object" in reply.error["message"]
    finally:
        dist.destroy_process_group()

"""Ground-truth objects by size (audit.objects): components, buckets, counts, the setting,
and the breakdown in a demo audit's record and report."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.config import DEFAULT_SIZE_BUCKETS, Settings, resolve_settings
from audit.errors import ConfigError
from audit.objects import (
    BUCKETS,
    COUNTS,
    ObjectSizeCounts,
    check_size_buckets,
    find_objects,
    label_components,
    object_counts,
    size_bucket_counts,
    size_bucket_scores,
)
from audit.report.attacks import build_attacks
from audit.report.breakdowns import condition_rows, object_size_rows, small_object_recall
from audit.session import run_audit

I = 255  # noqa: E741 - the ignore label, short so the masks below line up


def _partition(labels: np.ndarray) -> set[frozenset[tuple[int, ...]]]:
    """Components as sets of pixel coordinates: ids may differ, the grouping may not."""
    groups: dict[int, set[tuple[int, ...]]] = {}
    for where in zip(*np.nonzero(labels >= 0), strict=True):
        groups.setdefault(int(labels[where]), set()).add(tuple(int(v) for v in where))
    return {frozenset(g) for g in groups.values()}


def _reference(mask: np.ndarray, ignore: int) -> set[frozenset[tuple[int, int]]]:
    """Breadth-first search over 8-neighbours of equal label: slow and obviously right."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = set()
    for y in range(h):
        for x in range(w):
            if seen[y, x] or mask[y, x] == ignore:
                continue
            group, queue = set(), deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                group.add((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        inside = 0 <= ny < h and 0 <= nx < w
                        if inside and not seen[ny, nx] and mask[ny, nx] == mask[cy, cx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            out.add(frozenset(group))
    return out


def test_components_are_8_connected_per_class() -> None:
    mask = torch.tensor(
        [
            [1, 0, 0, 2, 2],
            [0, 1, 0, I, 2],
            [0, 0, 1, I, 2],
            [3, 0, 0, I, 0],
            [0, 3, 0, 0, 0],
        ]
    )
    labels = label_components(mask)
    assert labels.shape == (5, 5) and labels.dtype == torch.int64
    # 8-connected: the diagonal of 1s is one object, so is the diagonal of 3s, and the 0s
    # join across both diagonals and around the ignored column into one background object.
    expected = {
        frozenset({(0, 0), (1, 1), (2, 2)}),
        frozenset({(3, 0), (4, 1)}),
        frozenset({(0, 3), (0, 4), (1, 4), (2, 4)}),
        frozenset(
            {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 1), (3, 2), (4, 0), (4, 2)}
            | {(3, 4), (4, 3), (4, 4)}
        ),
    }
    assert _partition(labels.numpy()) == expected
    assert sorted(labels.unique().tolist()) == [-1, 0, 1, 2, 3]
    assert (labels == -1).sum() == 3


def test_ignore_splits_an_object_and_batches_number_objects_apart() -> None:
    wall = torch.tensor([[4, 4, I, 4, 4], [4, 4, I, 4, 4]])
    labels = label_components(torch.stack([wall, wall]))
    assert labels.shape == (2, 2, 5)
    ids = [
        set(labels[n][:, s].unique().tolist()) for n in range(2) for s in (slice(0, 2), slice(3, 5))
    ]
    assert all(len(i) == 1 for i in ids) and len(set.union(*ids)) == 4  # no id spans images


def test_components_match_a_breadth_first_search() -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        n, h, w = rng.integers(1, 3), rng.integers(1, 13), rng.integers(1, 13)
        mask = rng.integers(0, 3, (n, h, w))
        mask[rng.random((n, h, w)) < 0.15] = I
        labels = label_components(torch.from_numpy(mask)).numpy()
        for k in range(n):
            assert _partition(labels[k]) == _reference(mask[k], I)


def test_a_snake_is_one_object() -> None:
    # One winding object whose two ends are far apart along it: label propagation would take
    # hundreds of rounds; hooking and pointer jumping need a handful.
    mask = torch.zeros(41, 41, dtype=torch.int64)
    mask[::2] = 1
    mask[1::4, -1] = 1
    mask[3::4, 0] = 1
    labels = label_components(mask)
    assert len(labels[mask == 1].unique()) == 1


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 10 x 10 image (100 pixels): objects of 4, 10 and 20 pixels of class 1 on one
    66-pixel background of class 0, and a prediction of it."""
    mask = torch.zeros(10, 10, dtype=torch.int64)
    mask[0:2, 0:2] = 1  # 4 pixels
    mask[3:5, 1:6] = 1  # 10 pixels
    mask[6:10, 5:10] = 1  # 20 pixels
    pred = mask.clone()
    pred[0, 0:2] = 0  # small object: 2 of 4 right, exactly half -> detected
    pred[3, 1:6] = 0  # medium object: 4 of 10 right -> missed
    pred[4, 1] = 0
    pred[6:8, 5:10] = 0  # large object: 10 of 20 right -> detected
    pred[0, 9] = 1  # a false positive on the background: 65 of 66 right
    return mask, pred


def test_buckets_detection_and_pixel_counts_are_exact() -> None:
    mask, pred = _scene()
    objects = find_objects(mask[None], 255, (0.05, 0.2))
    # Bucket thresholds on the area fraction: 4 % small, 10 % medium, 20 % large (inclusive).
    by_area = dict(zip(objects.area.tolist(), objects.bucket.tolist(), strict=True))
    assert by_area == {4: 0, 10: 1, 20: 2, 66: 2}  # 66: the background
    counts = object_counts(objects, pred[None], mask[None])
    assert counts.shape == (1, len(BUCKETS), len(COUNTS)) and counts.dtype == torch.int64
    assert counts[0].tolist() == [
        [1, 1, 4, 2],  # small: detected at exactly half
        [1, 0, 10, 4],  # medium: 4 of 10 is not enough
        [2, 2, 86, 75],  # large: the 20-pixel object (10 right) and the background (65 of 66)
    ]
    scores = size_bucket_scores(counts, (0.05, 0.2))
    assert scores["small"] == {
        "objects": 1,
        "detected": 1,
        "recall": 1.0,
        "pixels": 4,
        "pixels_correct": 2,
        "pixel_recall": 0.5,
        "area_fraction": [0.0, 0.05],
    }
    assert scores["medium"]["recall"] == 0.0 and scores["medium"]["area_fraction"] == [0.05, 0.2]
    assert scores["large"]["pixel_recall"] == 75 / 86
    assert scores["large"]["area_fraction"] == [0.2, None]


def test_ignored_pixels_are_in_no_object_but_in_the_image_area() -> None:
    mask = torch.full((10, 10), I)
    mask[0, 0:3] = 2
    counts = size_bucket_counts(mask[None], mask[None], I, (0.05, 0.2))
    assert counts[0].tolist() == [[1, 1, 3, 3], [0, 0, 0, 0], [0, 0, 0, 0]]
    empty = size_bucket_scores(counts, (0.05, 0.2))
    assert empty["medium"]["recall"] is None and empty["large"]["pixel_recall"] is None


def test_counts_add_over_images_and_batches() -> None:
    rng = np.random.default_rng(3)
    masks = torch.from_numpy(rng.integers(0, 4, (5, 12, 16)))
    masks[:, :2] = I
    preds = torch.where(torch.from_numpy(rng.random((5, 12, 16)) < 0.7), masks, 0)
    whole = size_bucket_counts(preds, masks, I)
    parts = torch.cat(
        [size_bucket_counts(preds[k : k + 2], masks[k : k + 2], I) for k in (0, 2, 4)]
    )
    assert torch.equal(whole, parts)  # per image, whatever the batching
    stream_a, stream_b = ObjectSizeCounts(I), ObjectSizeCounts(I)
    stream_a.update(preds[:3], masks[:3])
    stream_b.update(preds[3:], masks[3:])
    merged = stream_a.merge(stream_b)
    assert torch.equal(merged.counts, whole.sum(0))
    assert merged.compute() == size_bucket_scores(whole, DEFAULT_SIZE_BUCKETS)
    with pytest.raises(ValueError, match="different ignore index or size buckets"):
        stream_a.merge(ObjectSizeCounts(I, (0.01, 0.1)))


@pytest.mark.parametrize("bad", [(0.1,), (0.0, 0.1), (0.2, 0.1), (0.1, 0.1), (0.1, 1.5)])
def test_bad_buckets(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="0 < small < large <= 1"):
        check_size_buckets(bad)


# ----------------------------------------------------------------------------- the setting


def test_size_buckets_setting_from_files_and_command_line(tmp_path: Path) -> None:
    s = resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path)
    assert s.size_buckets == DEFAULT_SIZE_BUCKETS == (0.001, 0.01)
    (tmp_path / "audit.toml").write_text("size_buckets = [0.002, 0.05]\n")
    s = resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path)
    assert s.size_buckets == (0.002, 0.05)
    s = resolve_settings(
        rootdir=tmp_path, cli={"size_buckets": "0.01, 0.1"}, invocation_dir=tmp_path
    )
    assert s.size_buckets == (0.01, 0.1) and s.sources["size_buckets"] == "command line"


@pytest.mark.parametrize(
    "value", ["0.01", "a,b", "0.1,0.01", "0,0.1", "0.1,2", [1, 2, 3], "nan,0.1", [True, 0.1]]
)
def test_bad_size_buckets_setting(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"command line, key 'size_buckets': expected two area"):
        resolve_settings(rootdir=tmp_path, cli={"size_buckets": value}, invocation_dir=tmp_path)


def test_size_buckets_option(pytester: pytest.Pytester, run_audit) -> None:
    result = run_audit("--audit", "m.pt", "--audit-size-buckets", "0.1,0.01")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*SegAudit: command line, key 'size_buckets': expected two*"])


# ----------------------------------------------------------------------------- in a record

SUITE = """
name = "sizes"
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
eps = "4/255"
metric = "iou_ratio"
min = 0.0
[[claims]]
id = "noise"
kind = "corruption"
corruption = "gaussian_noise"
severity = 3
metric = "miou"
min = 0.0
"""


def test_demo_audit_records_and_reports_the_breakdown(tmp_path: Path) -> None:
    (tmp_path / "sizes.toml").write_text(SUITE)
    settings = Settings(
        suites=(str(tmp_path / "sizes.toml"),),
        data="synthetic?n=2&size=64x128",
        report_dir=tmp_path / "report",
        base_dir=tmp_path,
        invocation_dir=tmp_path,
        device="cpu",
        limit=2,
        bootstrap_resamples=0,
        size_buckets=(0.002, 0.02),
    )
    record = run_audit(settings)
    clean = record["evaluations"]["clean"]
    sizes = clean["by_object_size"]
    assert list(sizes) == list(BUCKETS)
    assert sizes["small"]["area_fraction"] == [0.0, 0.002]
    assert sizes["large"]["area_fraction"] == [0.02, None]
    # Every labelled pixel belongs to exactly one object.
    assert sum(b["pixels"] for b in sizes.values()) == clean["num_pixels"]
    assert sum(b["pixels_correct"] for b in sizes.values()) == sum(
        clean["confusion_matrix"][k][k] for k in range(len(clean["confusion_matrix"]))
    )
    assert sum(b["objects"] for b in sizes.values()) > 0
    assert "by_condition" not in clean  # synthetic scenes record no conditions
    (attack,) = [a for a in record["evaluations"]["attacks"] if a["attack"] == "fgsm"]
    under = attack["by_object_size"]
    # The same objects, judged on the attacked predictions.
    assert [under[b]["objects"] for b in BUCKETS] == [sizes[b]["objects"] for b in BUCKETS]
    assert sum(b["pixels_correct"] for b in under.values()) <= sum(
        b["pixels_correct"] for b in sizes.values()
    )
    (corrupted,) = record["evaluations"]["corruptions"]
    noisy = corrupted["by_object_size"]
    assert [noisy[b]["objects"] for b in BUCKETS] == [sizes[b]["objects"] for b in BUCKETS]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "By object size" in html and "Small-object<br>recall" in html


def test_the_engine_finds_a_batchs_objects_once_within_its_budget(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    import audit.objects as objects_module
    from audit.data import open_dataset
    from audit.engine import Engine
    from audit.model import load_model

    engine = Engine(load_model(tiny_model), open_dataset("synthetic?n=4&size=32x64"),
                    device="cpu", batch_size=2)  # fmt: skip
    first, second = list(engine.batches())
    assert engine.objects(first) is engine.objects(first)
    one_batch = 2 * 32 * 64 * 8  # two int64 label maps
    monkeypatch.setattr(objects_module, "CACHE_BYTES", one_batch)
    held = engine.objects(first)
    engine.objects(second)  # over the budget: the oldest batch is dropped
    again = engine.objects(first)
    assert again is not held and torch.equal(again.labels, held.labels)


def test_report_tables_tolerate_older_and_partial_records() -> None:
    rows = object_size_rows(
        {
            "large": {"objects": 2, "detected": 1, "recall": 0.5, "area_fraction": [0.01, None]},
            "small": {"objects": 0, "recall": None, "area_fraction": [0.0, 0.001]},
            "medium": "garbled",
        }
    )
    assert [r["name"] for r in rows] == ["small", "medium", "large"]
    assert rows[0]["area"] == "< 0.1%" and rows[0]["recall"] == "n/a"
    assert rows[1] == {
        "name": "medium",
        "area": "n/a",
        "objects": "n/a",
        "detected": "n/a",
        "recall": "n/a",
        "pixel_recall": "n/a",
    }
    assert rows[2]["area"] == "≥ 1.0%" and rows[2]["recall"] == "50.0%"
    assert object_size_rows(None) == [] and condition_rows({}) == []
    entry = {"id": "a", "attack": "fgsm", "norm": "linf", "eps": 0.01, "metrics": {}}
    old = build_attacks({"evaluations": {"attacks": [entry]}})
    assert old is not None and old["small_objects"] is False
    assert old["rows"][0]["small_recall"] == "n/a"
    entry["by_object_size"] = {"small": {"recall": 0.25}}
    new = build_attacks({"evaluations": {"attacks": [entry]}})
    assert new is not None and new["small_objects"] is True
    assert small_object_recall(entry) == new["rows"][0]["small_recall"] == "25.0%"

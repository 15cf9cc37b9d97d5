"""The ACDC layout (``acdc:PATH``), on a small fixture written in the released on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.config import Settings
from audit.data import ACDC_CONDITIONS, ACDCDataset, open_dataset
from audit.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from audit.errors import ConfigError, DataError
from audit.record.breakdowns import by_condition
from audit.session import run_audit
from conftest import ColourNet, save_torchscript

#: condition -> sequence -> frame numbers, for the val split
VAL = {
    "fog": {"GOPR0475": [41, 60], "GOPR0476": [8]},
    "night": {"GOPR0351": [5]},
    "rain": {"GOPR0400": [1, 2]},
    "snow": {"GOPR0122": [7]},
}


def _train_ids(k: int) -> np.ndarray:
    labels = np.full((4, 6), k % 19, np.uint8)
    labels[0, 0] = 255
    labels[1, :] = 18
    return labels


def _write_acdc(root: Path, split: str, frames: dict[str, dict[str, list[int]]]) -> None:
    rng = np.random.default_rng(0)
    k = 0
    for condition, sequences in frames.items():
        for sequence, numbers in sequences.items():
            img_dir = root / "rgb_anon" / condition / split / sequence
            ref_dir = root / "rgb_anon" / condition / f"{split}_ref" / sequence
            gt_dir = root / "gt" / condition / split / sequence
            for d in (img_dir, ref_dir, gt_dir):
                d.mkdir(parents=True, exist_ok=True)
            for n in numbers:
                stem = f"{sequence}_frame_{n:06d}"
                rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
                Image.fromarray(rgb, "RGB").save(img_dir / f"{stem}_rgb_anon.png")
                # Reference images share the sequence names: they must not become samples.
                Image.fromarray(rgb, "RGB").save(ref_dir / f"{stem}_rgb_ref_anon.png")
                Image.fromarray(_train_ids(k), "L").save(gt_dir / f"{stem}_gt_labelTrainIds.png")
                # The other encodings beside it hold values that are not train ids.
                Image.fromarray(np.full((4, 6), 26, np.uint8), "L").save(
                    gt_dir / f"{stem}_gt_labelIds.png"
                )
                Image.fromarray(np.full((4, 6), 200, np.uint8), "L").save(
                    gt_dir / f"{stem}_gt_invGray.png"
                )
                k += 1


@pytest.fixture
def acdc_root(tmp_path: Path) -> Path:
    root = tmp_path / "acdc"
    _write_acdc(root, "val", VAL)
    _write_acdc(root, "train", {"fog": {"GOPR0477": [3]}})
    # The test split ships images only.
    test_dir = root / "rgb_anon" / "fog" / "test" / "GOPR0478"
    test_dir.mkdir(parents=True)
    Image.new("RGB", (6, 4)).save(test_dir / "GOPR0478_frame_000001_rgb_anon.png")
    return root


def test_all_conditions_counts_ids_and_labels(acdc_root: Path) -> None:
    ds = open_dataset(f"acdc:{acdc_root}")
    assert isinstance(ds, ACDCDataset)
    assert ds.conditions == ACDC_CONDITIONS == ("fog", "night", "rain", "snow")
    assert ds.class_names == CITYSCAPES_CLASSES and ds.palette == CITYSCAPES_PALETTE
    assert ds.ignore_index == 255 and len(ds) == 7
    names = [ds[i].name for i in range(len(ds))]
    assert names == [
        "fog/GOPR0475/GOPR0475_frame_000041",
        "fog/GOPR0475/GOPR0475_frame_000060",
        "fog/GOPR0476/GOPR0476_frame_000008",
        "night/GOPR0351/GOPR0351_frame_000005",
        "rain/GOPR0400/GOPR0400_frame_000001",
        "rain/GOPR0400/GOPR0400_frame_000002",
        "snow/GOPR0122/GOPR0122_frame_000007",
    ]
    assert [ds.condition(i) for i in range(len(ds))] == [n.split("/")[0] for n in names]
    # labelTrainIds are read as they are: no remapping, 255 ignored.
    for k in range(len(ds)):
        assert np.array_equal(ds[k].mask.numpy(), _train_ids(k).astype(np.int64))
    sample = ds[0]
    assert sample.image.shape == (3, 4, 6) and sample.image.dtype == torch.float32
    info = ds.describe()
    assert info["kind"] == "acdc" and info["split"] == "val" and info["num_samples"] == 7
    assert info["conditions"] == ["fog", "night", "rain", "snow"]
    assert info["samples_per_condition"] == {"fog": 3, "night": 1, "rain": 2, "snow": 1}


def test_condition_selection_and_split(acdc_root: Path) -> None:
    ds = open_dataset(f"acdc:{acdc_root}?condition=rain")
    assert ds.conditions == ("rain",) and len(ds) == 2
    # ACDC's order whatever the spelling: the same selection is the same dataset.
    a = open_dataset(f"acdc:{acdc_root}?condition=snow, Fog&size=8x12")
    b = ACDCDataset(acdc_root, conditions=["fog", "snow"], size=(8, 12))
    assert a.conditions == ("fog", "snow") and len(a) == 4
    assert a.describe()["samples_per_condition"] == {"fog": 3, "snow": 1}
    assert a.fingerprint() == b.fingerprint()
    assert a[3].image.shape == (3, 8, 12) and a[3].mask.shape == (8, 12)
    assert open_dataset(f"acdc:{acdc_root}?condition=all").fingerprint() != a.fingerprint()
    train = open_dataset(f"acdc:{acdc_root}?condition=fog&split=train")
    assert [train[0].name] == ["fog/GOPR0477/GOPR0477_frame_000003"]
    assert train.describe()["split"] == "train"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("condition=haze", r"--audit-data, key 'condition': expected 'all' or one or more of fog"),
        ("condition=fog,fog", "key 'condition': names fog twice"),
        ("condition=", "key 'condition': expected a non-empty value"),
        ("split=../val", "key 'split'"),
        ("weather=fog", "accepted keys: condition, split, size"),
    ],
)
def test_spec_errors(acdc_root: Path, spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_dataset(f"acdc:{acdc_root}?{spec}")


def test_test_split_has_no_labels(acdc_root: Path) -> None:
    with pytest.raises(DataError, match=r"ACDC split 'test' has no public labels .*split=val"):
        open_dataset(f"acdc:{acdc_root}?condition=fog&split=test")


def test_missing_label_and_missing_image_are_named(acdc_root: Path) -> None:
    gt = acdc_root / "gt/rain/val/GOPR0400"
    (gt / "GOPR0400_frame_000002_gt_labelTrainIds.png").unlink()
    # The other encodings do not stand in for the missing train ids.
    with pytest.raises(
        DataError,
        match=r"GOPR0400_frame_000002_rgb_anon\.png has no annotation: expected "
        r".*gt/rain/val/GOPR0400/GOPR0400_frame_000002_gt_labelTrainIds\.png",
    ):
        ACDCDataset(acdc_root)
    assert len(ACDCDataset(acdc_root, conditions="fog,night")) == 4
    image = acdc_root / "rgb_anon/snow/val/GOPR0122/GOPR0122_frame_000007_rgb_anon.png"
    image.unlink()
    with pytest.raises(
        DataError,
        match=r"annotation .*GOPR0122_frame_000007_gt_labelTrainIds\.png has no image: "
        r"expected .*rgb_anon/snow/val/GOPR0122/GOPR0122_frame_000007_rgb_anon\.png",
    ):
        ACDCDataset(acdc_root, conditions="snow")


def test_layout_errors(acdc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ACDC root .* does not exist"):
        ACDCDataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"ACDC image folder .*rgb_anon/night/train does not"):
        ACDCDataset(acdc_root, split="train")
    (acdc_root / "rgb_anon/night/train").mkdir()
    with pytest.raises(DataError, match=r"ACDC annotation folder .*gt/night/train does not"):
        ACDCDataset(acdc_root, conditions="night", split="train")
    (acdc_root / "gt/night/train").mkdir()
    with pytest.raises(DataError, match="ACDC condition 'night', split 'train' is empty"):
        ACDCDataset(acdc_root, conditions="night", split="train")


def test_values_that_are_not_train_ids_are_refused(acdc_root: Path) -> None:
    path = acdc_root / "gt/night/val/GOPR0351/GOPR0351_frame_000005_gt_labelTrainIds.png"
    Image.fromarray(np.full((4, 6), 26, np.uint8), "L").save(path)
    ds = ACDCDataset(acdc_root, conditions="night")
    with pytest.raises(DataError, match=r"sample 0 \(night/GOPR0351/.*holds values 26 outside"):
        ds[0]


# ----------------------------------------------------------------------------- per condition


def test_by_condition_sums_each_conditions_confusion_matrices(acdc_root: Path) -> None:
    ds = ACDCDataset(acdc_root, conditions="fog,rain")
    cms = torch.zeros(5, 19, 19, dtype=torch.int64)
    cms[:3, 0, 0] = 3  # fog: road right
    cms[3:, 0, 1] = 2  # rain: road taken for sidewalk
    cms[4, 1, 1] = 2
    out = by_condition(cms[:4], ds)  # a limit of 4 reaches one rain image
    assert out == {
        "fog": {"num_samples": 3, "metrics": {"miou": 1.0, "pixel_accuracy": 1.0}},
        "rain": {"num_samples": 1, "metrics": {"miou": 0.0, "pixel_accuracy": 0.0}},
    }
    out = by_condition(cms[:3], ds)
    assert out["rain"] == {"num_samples": 0, "metrics": {"miou": None, "pixel_accuracy": None}}
    assert by_condition(cms, open_dataset("synthetic?n=5")) is None


def test_audit_records_and_reports_results_per_condition(acdc_root: Path, tmp_path: Path) -> None:
    model = save_torchscript(ColourNet(num_classes=19), tmp_path / "net19.pt", {"num_classes": 19})
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[[claims]]\nid = "clean"\nkind = "clean"\nmetric = "miou"\nmin = 0.0\n'
    )
    record = run_audit(
        Settings(
            model=str(model),
            data=f"acdc:{acdc_root}?condition=fog,night,snow",
            suites=(str(tmp_path / "s.toml"),),
            report_dir=tmp_path / "report",
            base_dir=tmp_path,
            invocation_dir=tmp_path,
            device="cpu",
            bootstrap_resamples=0,
        )
    )
    described = record["provenance"]["dataset"]["describe"]
    assert described["conditions"] == ["fog", "night", "snow"]
    assert described["samples_per_condition"] == {"fog": 3, "night": 1, "snow": 1}
    clean = record["evaluations"]["clean"]
    conditions = clean["by_condition"]
    assert list(conditions) == ["fog", "night", "snow"]
    assert [c["num_samples"] for c in conditions.values()] == [3, 1, 1]
    assert all(set(c["metrics"]) == {"miou", "pixel_accuracy"} for c in conditions.values())
    # Pixel accuracy per condition, weighted by labelled pixels (23 per image), is the whole's.
    weighted = sum(c["metrics"]["pixel_accuracy"] * c["num_samples"] for c in conditions.values())
    assert weighted / 5 == pytest.approx(clean["metrics"]["pixel_accuracy"])
    assert [e["name"] for e in clean["examples"]][:1] == ["fog/GOPR0475/GOPR0475_frame_000041"]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "By condition" in html and "<td>night</td>" in html

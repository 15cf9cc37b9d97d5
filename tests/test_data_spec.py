"""``--audit-data`` specs: the accepted grammar, and errors that say what to write instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.data import (
    CityscapesDataset,
    FolderDataset,
    SyntheticStreetScenes,
    VOCDataset,
    open_dataset,
)
from audit.errors import ConfigError, DataError


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "mydata"
    for sub in ("img", "lbl"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "img" / "a.png")
    Image.fromarray(np.ones((4, 6), np.uint8), "L").save(root / "lbl" / "a.png")
    return root


def _cityscapes(root: Path) -> Path:
    for top, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        d = root / top / "val" / "ulm"
        d.mkdir(parents=True)
        mode = "RGB" if top == "leftImg8bit" else "L"
        Image.new(mode, (8, 4)).save(d / f"ulm_000000_000019_{suffix}.png")
    return root


def _voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    Image.new("RGB", (8, 4)).save(voc / "JPEGImages" / "2007_000001.jpg")
    Image.new("P", (8, 4)).save(voc / "SegmentationClass" / "2007_000001.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000001\n")
    return voc


def test_synthetic_defaults() -> None:
    ds = open_dataset("synthetic")
    assert isinstance(ds, SyntheticStreetScenes)
    assert ds.describe() == SyntheticStreetScenes().describe()


def test_synthetic_options() -> None:
    ds = open_dataset("synthetic?n=32&seed=3&size=128x256")
    assert isinstance(ds, SyntheticStreetScenes)
    assert (len(ds), ds.seed, ds.size) == (32, 3, (128, 256))
    assert open_dataset(" Synthetic?size=64X96 ").size == (64, 96)


def test_layout_specs_absolute_and_relative(tmp_path: Path, folder_root: Path) -> None:
    cs = _cityscapes(tmp_path / "cs")
    ds = open_dataset(f"cityscapes:{cs}?split=val&size=512x1024")
    assert isinstance(ds, CityscapesDataset)
    assert ds.describe()["split"] == "val" and ds.size == (512, 1024)
    assert ds[0].image.shape == (3, 512, 1024)

    voc = _voc(tmp_path)
    assert isinstance(
        open_dataset("voc:VOCdevkit/VOC2012?split=val", base_dir=tmp_path), VOCDataset
    )
    assert open_dataset("voc:VOCdevkit", base_dir=tmp_path).root == voc.resolve()

    ds = open_dataset("folder:mydata?images=img&masks=lbl&classes=bg, thing", base_dir=tmp_path)
    assert isinstance(ds, FolderDataset)
    assert ds.class_names == ("bg", "thing") and len(ds) == 1
    assert ds.root == folder_root.resolve()


def test_relative_path_defaults_to_cwd(folder_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder_root.parent)
    ds = open_dataset("folder:mydata?images=img&masks=lbl&classes=a,b&ignore_index=7")
    assert ds.root == folder_root.resolve() and ds.ignore_index == 7


@pytest.mark.parametrize(
    ("spec", "key", "match"),
    [
        ("", None, "empty data spec; examples: synthetic"),
        ("coco:/data", "kind", "unknown data kind 'coco'.*accepted kinds: synthetic, cityscapes"),
        ("synthetic?num=3", "num", "unknown option for 'synthetic' data; accepted keys: n, seed"),
        ("voc:/x?fold=1", "fold", "accepted keys: split, size"),
        ("folder:/x?image=a", "image", "accepted keys: images, masks, classes, ignore_index"),
        ("synthetic?n=0", "n", "expected an integer >= 1, got '0'"),
        ("synthetic?n=many", "n", "expected an integer >= 1, got 'many'"),
        ("synthetic?seed=-2", "seed", "expected an integer >= 0"),
        ("synthetic?size=128", "size", "expected HEIGHTxWIDTH such as 512x1024, got '128'"),
        ("synthetic?size=0x10", "size", "expected HEIGHTxWIDTH"),
        ("synthetic?size=16x16", "size", "integer >= 32"),
        ("synthetic?n=2&n=3", "n", "given twice"),
        ("synthetic?seed", "seed", "has no value"),
        ("synthetic:/data", "path", "synthetic data takes no path"),
        ("cityscapes", "path", "cityscapes data needs a path"),
        ("voc:?split=val", "path", "voc data needs a path"),
        ("cityscapes:/data?split=", "split", "expected a non-empty value"),
        ("cityscapes:/data?split=../x", "split", "must be a plain name"),
        ("folder:/data?classes=a,,b", "classes", "comma-separated class names"),
    ],
)
def test_bad_specs(spec: str, key: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        open_dataset(spec)
    assert info.value.source == "--audit-data"
    assert info.value.key == key
    assert str(info.value).startswith("--audit-data")


def test_missing_data_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Cityscapes root .*nowhere does not exist"):
        open_dataset("cityscapes:nowhere", base_dir=tmp_path)
    with pytest.raises(DataError, match="is not a VOC2012 folder"):
        open_dataset(f"voc:{tmp_path}")


def test_default_class_names_reach_only_a_folder_without_its_own(folder_root: Path) -> None:
    spec = f"folder:{folder_root}?images=img&masks=lbl"
    model_names = ("bg", "thing")
    ds = open_dataset(spec, default_class_names=model_names)
    assert ds.class_names == model_names
    assert ds.describe()["class_names_from"] == "the model's metadata"
    # The spec's own classes= wins over the model's names.
    own = open_dataset(spec + "&classes=x,y,z", default_class_names=model_names)
    assert own.class_names == ("x", "y", "z")
    # Layouts with fixed classes ignore the default.
    synthetic = open_dataset("synthetic?n=2", default_class_names=model_names)
    assert synthetic.num_classes == 8
    with pytest.raises(DataError, match=r"no class names .*model.s metadata"):
        open_dataset(spec)

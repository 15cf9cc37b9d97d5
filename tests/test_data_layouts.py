"""Cityscapes, VOC and folder layouts, on small fixtures written in the real on-disk formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.data import CityscapesDataset, FolderDataset, VOCDataset
from audit.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from audit.data.voc import VOC_CLASSES
from audit.errors import ConfigError, DataError

# cityscapesScripts labels.py: (labelId, trainId) of the 19 evaluated classes.
OFFICIAL_TRAIN_IDS = [
    (7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9),
    (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18),
]  # fmt: skip


def _rgb(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------- Cityscapes


def _write_cityscapes(root: Path, split: str, frames: dict[str, list[np.ndarray]]) -> None:
    rng = np.random.default_rng(0)
    for city, label_maps in frames.items():
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for k, labels in enumerate(label_maps):
            stem = f"{city}_{k:06d}_000019"
            h, w = labels.shape
            _rgb(rng, h, w).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(labels.astype(np.uint8), "L").save(
                gt_dir / f"{stem}_gtFine_labelIds.png"
            )
            # The real release ships these beside labelIds; they must not be mistaken for masks.
            _rgb(rng, h, w).save(gt_dir / f"{stem}_gtFine_color.png")
            (gt_dir / f"{stem}_gtFine_polygons.json").write_text("{}")


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    every_id = np.arange(0, 36, dtype=np.uint8).reshape(4, 9)
    every_id[3, 8] = 255  # license plates (id -1) are stored as 255
    plain = np.full((4, 9), 26, dtype=np.uint8)
    plain[:2] = 7
    root = tmp_path / "cityscapes"
    _write_cityscapes(root, "val", {"frankfurt": [every_id, plain], "aachen": [plain]})
    _write_cityscapes(root, "train", {"bochum": [plain]})
    return root


def test_cityscapes_pairs_order_and_label_mapping(cityscapes_root: Path) -> None:
    ds = CityscapesDataset(cityscapes_root)
    assert len(ds) == 3
    assert ds.class_names == CITYSCAPES_CLASSES and ds.num_classes == 19
    assert ds.palette == CITYSCAPES_PALETTE and ds.ignore_index == 255
    assert [ds[i].name for i in range(3)] == [
        "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png",
    ]
    mask = ds[1].mask
    assert mask.dtype == torch.int64 and mask.shape == (4, 9)
    ids = np.arange(0, 36).reshape(4, 9)
    ids[3, 8] = 255
    official = dict(OFFICIAL_TRAIN_IDS)
    expected = np.vectorize(lambda v: official.get(int(v), 255))(ids)
    assert np.array_equal(mask.numpy(), expected)
    assert sorted(set(mask.unique().tolist()) - {255}) == list(range(19))
    plain = ds[0].mask
    assert set(plain[:2].unique().tolist()) == {0} and set(plain[2:].unique().tolist()) == {13}


def test_cityscapes_image_matches_file(cityscapes_root: Path) -> None:
    ds = CityscapesDataset(cityscapes_root, split="train")
    sample = ds[0]
    raw = np.array(Image.open(cityscapes_root / sample.name))
    assert sample.image.dtype == torch.float32 and sample.image.shape == (3, 4, 9)
    assert torch.equal(sample.image, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    info = ds.describe()
    assert info["kind"] == "cityscapes" and info["split"] == "train"
    assert info["num_samples"] == 1 and info["size"] is None
    assert info["root"] == str(cityscapes_root.resolve())


def test_cityscapes_resize(cityscapes_root: Path) -> None:
    sample = CityscapesDataset(cityscapes_root, size=(8, 6))[1]
    assert sample.image.shape == (3, 8, 6) and sample.mask.shape == (8, 6)
    assert sample.image.min() >= 0 and sample.image.max() <= 1
    native = CityscapesDataset(cityscapes_root)[1].mask
    # Nearest neighbour never invents labels.
    assert set(sample.mask.unique().tolist()) <= set(native.unique().tolist())


def test_cityscapes_missing_annotation(cityscapes_root: Path) -> None:
    gone = cityscapes_root / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    gone.unlink()
    with pytest.raises(DataError, match=r"aachen_000000_000019_leftImg8bit\.png has no annotation"):
        CityscapesDataset(cityscapes_root)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing_root", "Cityscapes root .* does not exist"),
        ("no_split", r"Cityscapes image folder .*leftImg8bit/test does not exist"),
        ("empty_split", "Cityscapes split 'test' is empty"),
    ],
)
def test_cityscapes_layout_errors(cityscapes_root: Path, layout: str, match: str) -> None:
    root = cityscapes_root
    if layout == "missing_root":
        root = root / "nowhere"
    elif layout == "empty_split":
        (root / "leftImg8bit/test/berlin").mkdir(parents=True)
        (root / "gtFine/test").mkdir(parents=True)
    with pytest.raises(DataError, match=match):
        CityscapesDataset(root, split="test")


def test_cityscapes_corrupt_image_names_file_and_sample(cityscapes_root: Path) -> None:
    ds = CityscapesDataset(cityscapes_root)
    _truncate(cityscapes_root / ds[2].name)
    ds[0]  # other samples stay readable
    with pytest.raises(DataError, match=r"sample 2 .*cannot read image .*frankfurt_000001_000019"):
        ds[2]


def test_bad_split_name(cityscapes_root: Path) -> None:
    with pytest.raises(ConfigError, match="key 'split'"):
        CityscapesDataset(cityscapes_root, split="../train")


# ----------------------------------------------------------------------------- VOC


def _voc_palette_bytes() -> list[int]:
    # Written out independently of audit.data.voc: class 1 is (128, 0, 0), 2 is (0, 128, 0)...
    flat = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        flat += [r, g, b]
    return flat


def _write_voc(devkit: Path, ids: dict[str, np.ndarray], splits: dict[str, list[str]]) -> Path:
    voc = devkit / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for image_id, labels in ids.items():
        h, w = labels.shape
        _rgb(rng, h, w).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = Image.fromarray(labels.astype(np.uint8), "P")
        mask.putpalette(_voc_palette_bytes())
        mask.save(voc / "SegmentationClass" / f"{image_id}.png")
    for split, names in splits.items():
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return voc


@pytest.fixture
def voc_devkit(tmp_path: Path) -> Path:
    cat = np.zeros((6, 8), np.uint8)
    cat[1:5, 2:6] = 255  # the white border VOC draws around objects
    cat[2:4, 3:5] = 8
    person = np.full((6, 8), 15, np.uint8)
    person[:, :2] = 0
    devkit = tmp_path / "VOCdevkit"
    _write_voc(
        devkit,
        {"2007_000033": cat, "2007_000042": person, "2008_000001": person},
        {"val": ["2007_000042", "2007_000033"], "train": ["2008_000001"]},
    )
    return devkit


@pytest.mark.parametrize("level", ["devkit", "voc2012"])
def test_voc_palette_indices_and_roots(voc_devkit: Path, level: str) -> None:
    root = voc_devkit if level == "devkit" else voc_devkit / "VOC2012"
    ds = VOCDataset(root)
    assert ds.class_names == VOC_CLASSES and len(VOC_CLASSES) == 21
    assert ds.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert ds.palette[15] == (192, 128, 128)  # person
    assert len(ds) == 2
    assert [ds[i].name for i in range(2)] == [
        "JPEGImages/2007_000042.jpg",
        "JPEGImages/2007_000033.jpg",
    ]
    cat = ds[1].mask.numpy()
    assert cat[0, 0] == 0 and cat[1, 2] == 255 and cat[2, 3] == 8
    assert set(np.unique(cat).tolist()) == {0, 8, 255}
    person = ds[0].mask.numpy()
    assert set(np.unique(person[:, 2:]).tolist()) == {15}
    image = ds[0].image
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1


def test_voc_split_and_resize(voc_devkit: Path) -> None:
    ds = VOCDataset(voc_devkit, split="train", size=(12, 16))
    assert len(ds) == 1 and ds.describe()["split"] == "train"
    sample = ds[0]
    assert sample.image.shape == (3, 12, 16) and sample.mask.shape == (12, 16)
    assert set(sample.mask.unique().tolist()) == {0, 15}


def test_voc_rgb_mask_refused(voc_devkit: Path) -> None:
    path = voc_devkit / "VOC2012/SegmentationClass/2007_000033.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match=r"sample 1 .*2007_000033\.png is a RGB image"):
        VOCDataset(voc_devkit)[1]


def test_voc_out_of_range_mask_values(voc_devkit: Path) -> None:
    path = voc_devkit / "VOC2012/SegmentationClass/2007_000042.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[0, 0], labels[0, 1] = 21, 40
    bad = Image.fromarray(labels, "P")
    bad.putpalette(_voc_palette_bytes())
    bad.save(path)
    with pytest.raises(DataError, match=r"2007_000042\.png holds values 21, 40 outside the 21"):
        VOCDataset(voc_devkit)[0]


@pytest.mark.parametrize(
    ("break_it", "match"),
    [
        (lambda voc: (voc / "ImageSets/Segmentation/val.txt").unlink(), r"split file .*val\.txt"),
        (
            lambda voc: (voc / "ImageSets/Segmentation/val.txt").write_text("\n\n"),
            "lists no images",
        ),
        (lambda voc: (voc / "JPEGImages/2007_000042.jpg").unlink(), r"lists '2007_000042' but"),
        (
            lambda voc: (voc / "SegmentationClass/2007_000033.png").unlink(),
            r"2007_000033\.jpg has no annotation",
        ),
        (lambda voc: shutil.rmtree(voc / "JPEGImages"), "is not a VOC2012 folder"),
    ],
)
def test_voc_layout_errors(voc_devkit: Path, break_it, match: str) -> None:
    break_it(voc_devkit / "VOC2012")
    with pytest.raises(DataError, match=match):
        VOCDataset(voc_devkit)


def test_voc_truncated_jpeg(voc_devkit: Path) -> None:
    _truncate(voc_devkit / "VOC2012/JPEGImages/2007_000033.jpg")
    with pytest.raises(DataError, match=r"sample 1 .*cannot read image .*2007_000033\.jpg"):
        VOCDataset(voc_devkit)[1]


# ----------------------------------------------------------------------------- folder


def _write_folder(root: Path, stems: list[str], *, classes: list[str] | None = None) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for k, stem in enumerate(stems):
        suffix = ".jpg" if k % 2 else ".png"
        _rgb(rng, 5, 7).save(root / "images" / f"{stem}{suffix}")
        labels = np.full((5, 7), k % 3, np.uint8)
        labels[0, 0] = 255
        Image.fromarray(labels, "L").save(root / "masks" / f"{stem}.png")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n\n")


def test_folder_pairs_by_stem_with_classes_file(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["b", "a", "c"], classes=["bg", "crack", "rust"])
    (tmp_path / "masks" / "notes.txt").write_text("not a mask")  # only PNGs are masks
    ds = FolderDataset(tmp_path)
    assert ds.class_names == ("bg", "crack", "rust") and ds.num_classes == 3
    assert len(ds.palette) == 3 and ds.ignore_index == 255
    assert [ds[i].name for i in range(3)] == ["images/a.jpg", "images/b.png", "images/c.png"]
    assert set(ds[0].mask.unique().tolist()) == {1, 255}
    info = ds.describe()
    assert info["images"] == "images" and info["masks"] == "masks" and info["num_samples"] == 3
    assert info["class_names"] == ["bg", "crack", "rust"] and info["ignore_index"] == 255
    assert info["class_names_from"].endswith("classes.txt")


def test_folder_class_names_argument_and_custom_dirs(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x", "y"])
    (tmp_path / "images").rename(tmp_path / "img")
    (tmp_path / "masks").rename(tmp_path / "lbl")
    ds = FolderDataset(tmp_path, images="img", masks="lbl", class_names=["a", "b"], size=(10, 14))
    assert ds.class_names == ("a", "b")
    sample = ds[1]
    assert sample.image.shape == (3, 10, 14) and set(sample.mask.unique().tolist()) == {1, 255}


def test_folder_custom_ignore_index(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x"], classes=["a", "b"])
    with pytest.raises(DataError, match="holds values 255 outside the 2 classes"):
        FolderDataset(tmp_path, ignore_index=9)[0]
    with pytest.raises(ConfigError, match=r"key 'ignore_index'.*class 'b'"):
        FolderDataset(tmp_path, ignore_index=1)


def test_folder_class_name_errors(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x"])
    with pytest.raises(DataError, match=r"no class names .*classes\.txt"):
        FolderDataset(tmp_path)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"key 'class_names'.*classes\.txt lists \['a', 'b'\]"):
        FolderDataset(tmp_path, class_names=["a", "c"])
    assert FolderDataset(tmp_path, class_names=["a", "b"]).class_names == ("a", "b")
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"repeat \['a'\]"):
        FolderDataset(tmp_path)


def test_folder_layout_errors(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x", "y"], classes=["a", "b", "c"])
    (tmp_path / "masks" / "y.png").unlink()
    with pytest.raises(DataError, match=r"image .*y\.jpg has no mask: expected .*masks/y\.png"):
        FolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"mask folder .*labels does not exist"):
        FolderDataset(tmp_path, masks="labels")
    for p in (tmp_path / "images").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="holds no images"):
        FolderDataset(tmp_path)


def test_folder_masks_without_images_are_an_error_naming_them(tmp_path: Path) -> None:
    # A mask whose image is missing (a failed copy, a typo in a stem) would silently shrink
    # the audited set; it must be named, not skipped.
    _write_folder(tmp_path, ["x", "y"], classes=["a", "b", "c"])
    labels = np.zeros((5, 7), np.uint8)
    for k in range(11):
        Image.fromarray(labels, "L").save(tmp_path / "masks" / f"orphan{k:02d}.png")
    with pytest.raises(DataError) as info:
        FolderDataset(tmp_path)
    message = str(info.value)
    assert message.startswith(f"11 mask(s) in {tmp_path / 'masks'} have no image")
    named = [f"orphan{k:02d}.png" for k in range(8)]
    assert ", ".join(named) + " and 3 more" in message
    assert "orphan08.png" not in message
    assert "add their images or move the masks out" in message


def test_folder_one_orphan_mask(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x"], classes=["a", "b"])
    (tmp_path / "images" / "x.png").rename(tmp_path / "images" / "x2.png")
    # x2.png has no mask: that error comes first, as before.
    with pytest.raises(DataError, match=r"image .*x2\.png has no mask"):
        FolderDataset(tmp_path)
    Image.fromarray(np.zeros((5, 7), np.uint8), "L").save(tmp_path / "masks" / "x2.png")
    with pytest.raises(DataError, match=r"^1 mask\(s\) in .*masks have no image .*: x\.png;"):
        FolderDataset(tmp_path)


def test_folder_class_names_default_from_the_model(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x", "y"])
    ds = FolderDataset(tmp_path, default_class_names=("road", "car", "sky"))
    assert ds.class_names == ("road", "car", "sky")
    assert ds.describe()["class_names_from"] == "the model's metadata"
    assert set(ds[1].mask.unique().tolist()) == {1, 255}
    # The dataset's own names win over the default: classes= first, then classes.txt.
    given = FolderDataset(tmp_path, class_names=["a", "b"], default_class_names=["m", "n"])
    assert given.class_names == ("a", "b") and given.describe()["class_names_from"] == (
        "class_names"
    )
    (tmp_path / "classes.txt").write_text("p\nq\nr\n")
    from_file = FolderDataset(tmp_path, default_class_names=["m", "n"])
    assert from_file.class_names == ("p", "q", "r")
    with pytest.raises(DataError, match=r"from the model's metadata\) repeat \['a'\]"):
        (tmp_path / "classes.txt").unlink()
        FolderDataset(tmp_path, default_class_names=["a", "a"])


def test_folder_without_any_class_names_says_every_way_to_give_them(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x"])
    with pytest.raises(DataError) as info:
        FolderDataset(tmp_path)
    message = str(info.value)
    assert "classes.txt" in message and "classes=a,b,c" in message
    assert "class_names in the model's metadata" in message


def test_folder_size_mismatch_and_corrupt_mask(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x", "y"], classes=["a", "b", "c"])
    Image.fromarray(np.zeros((3, 3), np.uint8), "L").save(tmp_path / "masks" / "x.png")
    (tmp_path / "masks" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = FolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"sample 0 .*x\.png is 5x7 but its mask .*x\.png is 3x3"):
        ds[0]
    with pytest.raises(DataError, match=r"sample 1 \(images/y\.jpg\): cannot read mask .*y\.png"):
        ds[1]


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_stable_and_sensitive(cityscapes_root: Path, tmp_path: Path) -> None:
    fp = CityscapesDataset(cityscapes_root).fingerprint()
    assert len(fp) == 64
    assert CityscapesDataset(cityscapes_root).fingerprint() == fp
    # Moving the dataset keeps its identity; options and content change it.
    moved = shutil.copytree(cityscapes_root, tmp_path / "elsewhere")
    assert CityscapesDataset(moved).fingerprint() == fp
    assert CityscapesDataset(cityscapes_root, size=(4, 8)).fingerprint() != fp
    assert CityscapesDataset(cityscapes_root, split="train").fingerprint() != fp
    mask = moved / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    data = bytearray(mask.read_bytes())
    data[-5] ^= 1
    mask.write_bytes(bytes(data))
    assert CityscapesDataset(moved).fingerprint() != fp
    # Files the dataset does not use do not count.
    (cityscapes_root / "gtFine/val/aachen/notes.txt").write_text("unrelated")
    assert CityscapesDataset(cityscapes_root).fingerprint() == fp


def test_fingerprint_is_cached(voc_devkit: Path) -> None:
    ds = VOCDataset(voc_devkit)
    fp = ds.fingerprint()
    (voc_devkit / "VOC2012/JPEGImages/2007_000033.jpg").write_bytes(b"changed")
    assert ds.fingerprint() == fp
    assert VOCDataset(voc_devkit).fingerprint() != fp


def test_folder_fingerprint_covers_class_names(tmp_path: Path) -> None:
    _write_folder(tmp_path, ["x"])
    a = FolderDataset(tmp_path, class_names=["a", "b", "c"]).fingerprint()
    assert FolderDataset(tmp_path, class_names=["a", "b", "z"]).fingerprint() != a
    image = tmp_path / "images" / "x.png"
    data = bytearray(image.read_bytes())
    data[40] ^= 0xFF
    image.write_bytes(bytes(data))
    assert FolderDataset(tmp_path, class_names=["a", "b", "c"]).fingerprint() != a

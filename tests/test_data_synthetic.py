"""The procedural street scenes: reproducible, well-formed, and balanced enough to learn from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audit.data import STREET_CLASSES, SyntheticStreetScenes
from audit.data.synthetic import GENERATOR_VERSION
from audit.errors import ConfigError


@pytest.fixture(scope="module")
def scenes() -> SyntheticStreetScenes:
    return SyntheticStreetScenes(24, seed=0)


@pytest.fixture(scope="module")
def masks(scenes: SyntheticStreetScenes) -> np.ndarray:
    return np.stack([scenes[i].mask.numpy() for i in range(len(scenes))])


def test_class_metadata() -> None:
    ds = SyntheticStreetScenes(4)
    assert ds.class_names == STREET_CLASSES
    assert STREET_CLASSES == (
        "road",
        "sidewalk",
        "building",
        "sky",
        "vegetation",
        "car",
        "person",
        "pole",
    )
    assert ds.num_classes == 8
    assert ds.ignore_index == 255
    assert len(ds.palette) == 8 and len(set(ds.palette)) == 8
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ds.palette)
    assert ds.kind == "synthetic"


@pytest.mark.parametrize("size", [(128, 256), (64, 96), (37, 53)])
def test_shapes_dtypes_and_ranges(size: tuple[int, int]) -> None:
    ds = SyntheticStreetScenes(3, seed=5, size=size)
    assert len(ds) == 3
    for i in range(3):
        sample = ds[i]
        assert sample.image.shape == (3, *size)
        assert sample.image.dtype == torch.float32
        assert sample.image.is_contiguous()
        assert sample.image.min().item() >= 0.0 and sample.image.max().item() <= 1.0
        assert sample.mask.shape == size
        assert sample.mask.dtype == torch.int64
        values = set(sample.mask.unique().tolist())
        assert values <= set(range(8)) | {255}
        assert sample.name == f"synthetic-{i:06d}"


def test_same_sample_twice_and_in_any_order() -> None:
    ds = SyntheticStreetScenes(8, seed=3)
    forward = [ds[i] for i in range(8)]
    backward = [ds[i] for i in reversed(range(8))][::-1]
    fresh = SyntheticStreetScenes(8, seed=3)[5]
    for a, b in zip(forward, backward, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert torch.equal(fresh.image, forward[5].image)
    assert torch.equal(fresh.mask, forward[5].mask)


def test_sample_does_not_depend_on_set_length() -> None:
    small, large = SyntheticStreetScenes(4, seed=2), SyntheticStreetScenes(40, seed=2)
    assert torch.equal(small[3].image, large[3].image)
    assert torch.equal(small[-1].mask, large[3].mask)


def test_different_seeds_and_indices_differ() -> None:
    a = [SyntheticStreetScenes(6, seed=0)[i] for i in range(6)]
    b = [SyntheticStreetScenes(6, seed=1)[i] for i in range(6)]
    for x in a:
        for y in b:
            assert not torch.equal(x.image, y.image)
            assert (x.mask != y.mask).float().mean() > 0.05
    assert not torch.equal(a[0].image, a[1].image)


def test_index_bounds() -> None:
    ds = SyntheticStreetScenes(3)
    with pytest.raises(IndexError, match="sample 3 out of range"):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]
    assert [s.name for s in ds] == ["synthetic-000000", "synthetic-000001", "synthetic-000002"]


def test_every_class_appears_often(masks: np.ndarray) -> None:
    counts = np.bincount(masks.ravel(), minlength=256)
    labelled = counts[:8].sum()
    freq = counts[:8] / labelled
    # Thin and small classes must still be a visible share of the pixels.
    minimum = dict.fromkeys(STREET_CLASSES, 0.03) | {"person": 0.008, "pole": 0.005}
    for c, name in enumerate(STREET_CLASSES):
        assert freq[c] >= minimum[name], f"{name} covers only {freq[c]:.4f} of labelled pixels"
        present = np.mean([(m == c).any() for m in masks])
        assert present >= 0.75, f"{name} appears in only {present:.0%} of images"
    # The unlabelled seams along boundaries stay thin.
    assert counts[255] / masks.size < 0.1


def test_single_pixel_colour_does_not_give_the_class_away(
    scenes: SyntheticStreetScenes, masks: np.ndarray
) -> None:
    """A colour-histogram lookup, the best any per-pixel colour rule can do, scores poorly."""
    bins = 16
    images = np.stack([scenes[i].image.numpy().transpose(1, 2, 0) for i in range(len(scenes))])
    codes = (np.minimum((images * bins).astype(np.int64), bins - 1) * [bins**2, bins, 1]).sum(-1)
    train, test = slice(0, 16), slice(16, None)
    valid = masks[train] != 255
    table = np.zeros((bins**3, 8))
    np.add.at(table, (codes[train][valid], masks[train][valid]), 1)
    pred = table.argmax(1)[codes[test]]
    truth = masks[test]
    keep = truth != 255
    ious = []
    for c in range(8):
        inter = ((pred == c) & (truth == c) & keep).sum()
        union = (((pred == c) | (truth == c)) & keep).sum()
        ious.append(inter / max(union, 1))
    assert np.mean(ious) < 0.5


def test_describe_and_fingerprint() -> None:
    ds = SyntheticStreetScenes(32, seed=3, size=(96, 160))
    info = ds.describe()
    assert info == {
        "kind": "synthetic",
        "num_samples": 32,
        "seed": 3,
        "size": [96, 160],
        "generator_version": GENERATOR_VERSION,
    }
    json.dumps(info)
    fp = ds.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == SyntheticStreetScenes(32, seed=3, size=(96, 160)).fingerprint()
    others = {
        SyntheticStreetScenes(31, seed=3, size=(96, 160)).fingerprint(),
        SyntheticStreetScenes(32, seed=4, size=(96, 160)).fingerprint(),
        SyntheticStreetScenes(32, seed=3, size=(96, 161)).fingerprint(),
    }
    assert fp not in others and len(others) == 3


def test_fingerprint_covers_generator_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.data.synthetic as synthetic

    before = SyntheticStreetScenes(8).fingerprint()
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    assert SyntheticStreetScenes(8).fingerprint() != before


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"seed": -1}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"size": (16, 256)}, "size"),
        ({"size": (128,)}, "size"),
        ({"size": (128.0, 256)}, "size"),
    ],
)
def test_bad_arguments(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        SyntheticStreetScenes(**kwargs)

"""ModelMetadata validation and the logits checks that compare a model with a dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.data.cityscapes import CITYSCAPES_CLASSES
from audit.errors import ConfigError, EvaluationError, ModelError
from audit.model import ModelMetadata, check_finite, check_num_classes, load_model
from audit.model.metadata import check_set_aside
from conftest import ColourNet, save_torchscript

SOURCE = "model.pt (audit.json)"


def test_from_mapping_coerces_json_values() -> None:
    meta = ModelMetadata.from_mapping(
        {
            "name": "tiny",
            "num_classes": 3,
            "class_names": ["road", "car", "sky"],
            "ignore_index": 255,
            "mean": [0, 0.5, 1],
            "std": [0.25, 0.5, 1],
            "lipschitz": 2,
            "lipschitz_source": "spectral norm bound",
            "input_size": [64, 128],
        },
        source=SOURCE,
    )
    assert meta.class_names == ("road", "car", "sky")
    assert meta.mean == (0.0, 0.5, 1.0)
    assert all(isinstance(v, float) for v in meta.mean)
    assert meta.lipschitz == 2.0 and isinstance(meta.lipschitz, float)
    assert meta.input_size == (64, 128)


def test_to_dict_is_json_and_round_trips() -> None:
    meta = ModelMetadata(name="m", num_classes=2, class_names=("a", "b"), std=(1, 2, 3))
    data = json.loads(json.dumps(meta.to_dict()))
    assert data["class_names"] == ["a", "b"]
    assert data["mean"] is None
    assert ModelMetadata.from_mapping(data, source=SOURCE) == meta


def test_unknown_key_names_source_key_and_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"model\.pt \(audit\.json\), key 'num_class'") as info:
        ModelMetadata.from_mapping({"num_class": 19}, source=SOURCE)
    message = str(info.value)
    assert "did you mean 'num_classes'" in message
    assert "known keys are: name, num_classes, class_names" in message
    assert info.value.source == SOURCE and info.value.key == "num_class"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_classes", "19", r"key 'num_classes': expected an integer >= 1, got '19' \(str\)"),
        ("num_classes", True, r"key 'num_classes': expected an integer >= 1, got True"),
        ("num_classes", 0, r"key 'num_classes': expected an integer >= 1, got 0"),
        ("class_names", "road", r"key 'class_names': expected a non-empty list of strings"),
        ("class_names", ["road", 3], r"key 'class_names': expected a non-empty list of strings"),
        ("ignore_index", 2.5, r"key 'ignore_index': expected an integer"),
        ("mean", [0.5, 0.5], r"key 'mean': expected a list of 3 numbers \(one per RGB"),
        ("mean", [0.5, "x", 0.5], r"key 'mean': expected a list of 3 numbers"),
        ("std", [0.2, 0.0, 0.2], r"key 'std': expected a list of 3 positive numbers"),
        ("std", [0.2, -1, 0.2], r"key 'std': expected a list of 3 positive numbers"),
        ("lipschitz", -1, r"key 'lipschitz': expected a finite number > 0, got -1"),
        ("lipschitz", math.inf, r"key 'lipschitz': expected a finite number > 0, got inf"),
        ("lipschitz", "1.5", r"key 'lipschitz': expected a finite number > 0, got '1.5'"),
        ("input_size", [64], r"key 'input_size': expected \[height, width\]"),
        ("input_size", [64, 0], r"key 'input_size': expected \[height, width\]"),
        ("name", 7, r"key 'name': expected a string, got 7 \(int\)"),
    ],
)
def test_wrong_type_or_range_names_source_key_expectation_and_value(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError, match=r"^model\.pt \(audit\.json\), " + expected):
        ModelMetadata.from_mapping({key: value}, source=SOURCE)


def test_class_names_must_match_num_classes() -> None:
    with pytest.raises(ConfigError, match=r"key 'class_names': expected 3 class names"):
        ModelMetadata.from_mapping(
            {"num_classes": 3, "class_names": ["road", "car"]}, source=SOURCE
        )


def test_non_mapping_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.pt \(audit\.json\): .*got list"):
        ModelMetadata.from_mapping([1, 2], source=SOURCE)  # type: ignore[arg-type]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"ModelMetadata, key 'std'"):
        ModelMetadata(std=(1.0, 0.0, 1.0))


def test_null_values_mean_not_stated() -> None:
    assert ModelMetadata.from_mapping({"mean": None, "name": None}, source=SOURCE) == (
        ModelMetadata()
    )


def test_merged_override_wins_only_where_set() -> None:
    base = ModelMetadata(name="file", num_classes=3, mean=(0.5, 0.5, 0.5), lipschitz=4.0)
    override = ModelMetadata(mean=(0.1, 0.2, 0.3), lipschitz_source="config")
    merged = base.merged(override)
    assert merged.name == "file"
    assert merged.num_classes == 3
    assert merged.mean == (0.1, 0.2, 0.3)
    assert merged.lipschitz == 4.0
    assert merged.lipschitz_source == "config"
    assert base.mean == (0.5, 0.5, 0.5)  # frozen originals are untouched


def test_merged_reports_a_combination_that_disagrees() -> None:
    base = ModelMetadata(class_names=("a", "b"))
    with pytest.raises(ConfigError, match=r"disagree.*expected 3 class names"):
        base.merged(ModelMetadata(num_classes=3))


# -- unknown keys in a model's own audit.json ---------------------------------------------

NAMES = ["road", "car", "sky"]


def test_split_mapping_validates_known_keys_and_sets_unknown_ones_aside() -> None:
    meta, unknown = ModelMetadata.split_mapping(
        {"name": "m", "classes": NAMES, "author": "x"}, source=SOURCE
    )
    assert meta == ModelMetadata(name="m")
    assert unknown == {"classes": NAMES, "author": "x"}
    # Known keys are as strict as ever.
    with pytest.raises(ConfigError, match=r"key 'std': expected a list of 3 positive"):
        ModelMetadata.split_mapping({"std": [0, 1, 1], "classes": NAMES}, source=SOURCE)


def test_user_metadata_replaces_an_unknown_embedded_key_it_resembles() -> None:
    user = ModelMetadata(class_names=tuple(NAMES))
    assert check_set_aside({"classes": NAMES}, user, source=SOURCE) == {"classes": "class_names"}
    # 'classes' is as close to num_classes: a user who states the count answers it too.
    assert check_set_aside({"classes": 3}, ModelMetadata(num_classes=3), source=SOURCE) == {
        "classes": "num_classes"
    }
    assert check_set_aside({}, None, source=SOURCE) == {}


def test_unreplaced_unknown_embedded_key_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigError) as info:
        check_set_aside({"classes": NAMES}, ModelMetadata(name="x"), source=SOURCE)
    message = str(info.value)
    assert message.startswith(
        "model.pt (audit.json), key 'classes': unknown model metadata key "
        "(did you mean 'num_classes' or 'class_names'?)"
    )
    assert "re-export the model with 'num_classes' or 'class_names' in its audit.json" in message
    assert "--audit-metadata FILE, [tool.segaudit.metadata]" in message
    assert info.value.key == "classes"


def test_unknown_embedded_key_with_no_known_lookalike_stays_an_error() -> None:
    # The user's metadata cannot say what 'normalise' meant; guessing could change scores.
    full = ModelMetadata(class_names=tuple(NAMES), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"key 'normalise'.*will not guess: re-export"):
        check_set_aside({"normalise": "imagenet"}, full, source=SOURCE)


def test_user_supplied_metadata_stays_strict() -> None:
    with pytest.raises(ConfigError, match=r"key 'classes': unknown .*did you mean"):
        ModelMetadata.from_mapping({"classes": NAMES}, source="meta.json")


def test_load_model_lets_the_callers_metadata_replace_an_unknown_embedded_key(
    tmp_path: Path,
) -> None:
    meta = {"name": "third-party", "classes": NAMES}
    path = save_torchscript(ColourNet(num_classes=3), tmp_path / "m.pt", meta)
    with pytest.raises(ConfigError, match=r"m\.pt \(audit\.json\), key 'classes'"):
        load_model(path)
    loaded = load_model(path, metadata=ModelMetadata(class_names=tuple(NAMES)))
    assert loaded.metadata == ModelMetadata(name="third-party", class_names=tuple(NAMES))
    assert loaded.embedded_metadata == ModelMetadata(name="third-party")
    assert loaded.ignored_embedded == {"classes": "class_names"}


_finite = st.floats(min_value=-10, max_value=10, allow_nan=False)
_positive = st.floats(min_value=1e-3, max_value=10, allow_nan=False)


@settings(derandomize=True, max_examples=50, deadline=None)
@given(
    name=st.none() | st.text(max_size=10),
    names=st.none() | st.lists(st.text(max_size=5), min_size=1, max_size=4),
    mean=st.none() | st.tuples(_finite, _finite, _finite),
    std=st.none() | st.tuples(_positive, _positive, _positive),
    lipschitz=st.none() | _positive,
)
def test_to_dict_from_mapping_round_trip(
    name: str | None,
    names: list[str] | None,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    lipschitz: float | None,
) -> None:
    meta = ModelMetadata(
        name=name,
        class_names=tuple(names) if names else None,
        num_classes=len(names) if names else None,
        mean=mean,
        std=std,
        lipschitz=lipschitz,
    )
    data = json.loads(json.dumps(meta.to_dict()))
    assert ModelMetadata.from_mapping(data, source=SOURCE) == meta


CITYSCAPES = CITYSCAPES_CLASSES


def test_check_num_classes_names_model_dataset_and_counts() -> None:
    logits = torch.zeros(1, 21, 4, 4)
    pattern = (
        r"model 'x\.pt' outputs 21 classes per pixel but dataset 'cityscapes' has 19 classes "
        r"\(road, sidewalk, building, wall, fence, \.\.\.\)"
    )
    with pytest.raises(ModelError, match=pattern):
        check_num_classes(
            logits, 19, model_name="x.pt", dataset_name="cityscapes", class_names=CITYSCAPES
        )


def test_check_num_classes_accepts_a_match_and_rejects_flat_output() -> None:
    check_num_classes(torch.zeros(2, 19, 4, 4), 19, model_name="x.pt", dataset_name="c")
    with pytest.raises(ModelError, match=r"model 'x\.pt' returned a tensor of shape \(5,\)"):
        check_num_classes(torch.zeros(5), 19, model_name="x.pt", dataset_name="c")


def test_check_finite_names_bad_samples_and_pixel_counts() -> None:
    logits = torch.zeros(3, 2, 4, 4)
    logits[1, 0, 0, :3] = float("nan")
    logits[1, 1, 0, 0] = float("inf")  # same pixel as a NaN: counted once
    logits[2, 1, 3, 3] = -float("inf")
    pattern = (
        r"NaN or Inf logits for 2 sample\(s\): 'b\.png': 3 of 16 pixels; "
        r"'c\.png': 1 of 16 pixels"
    )
    with pytest.raises(EvaluationError, match=pattern):
        check_finite(logits, ["a.png", "b.png", "c.png"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_check_finite_finds_one_bad_logit_anywhere(value: float, dtype) -> None:
    """The fast path looks at the extremes only; one bad value, wherever it is, must fail."""
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        logits = (torch.randn(2, 3, 5, 6, generator=g) * 1e3).to(dtype)
        where = [int(torch.randint(0, size, (1,), generator=g)) for size in logits.shape]
        logits[tuple(where)] = value
        with pytest.raises(EvaluationError, match="1 sample"):
            check_finite(logits, ["a", "b"])
    check_finite(torch.zeros(0, 3, 5, 6), [])


def test_check_finite_passes_finite_logits() -> None:
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    check_finite(logits, ["a", "b"])
    with pytest.raises(ValueError, match="1 sample names for a batch of 2"):
        check_finite(logits, ["a"])

"""Loading every model format, refusing pickled code, and the wrapper's calling convention."""

from __future__ import annotations

import hashlib
import json
import pathlib
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from audit.errors import ConfigError, EvaluationError, ModelError
from audit.model import (
    LoadedModel,
    ModelMetadata,
    SegmentationWrapper,
    fingerprint_module,
    load_model,
)
from audit.resources import demo_model_file
from conftest import user_module

HELPER = "segaudit_model_factories"
FACTORY = f"{HELPER}:build"
# TorchScript is deprecated in recent torch but is still what many users hand over.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The helper module stands in for the user's own code: factories are imported by name,
# and a pickled module refers to its class by module path.
HELPER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinySeg(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.head = nn.Conv2d(6, num_classes, 1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))))


    def build():
        return TinySeg()


    def build_five():
        return TinySeg(num_classes=5)


    def broken():
        raise RuntimeError("needs a GPU")


    def not_a_module():
        return 42
    """
)


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return user_module(HELPER, HELPER_SOURCE, tmp_path / "helper_pkg", monkeypatch)


def trained(helper: ModuleType) -> nn.Module:
    """A TinySeg with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = helper.build()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def save_torchscript(model: nn.Module, path: Path, audit_json: str | None = None) -> Path:
    traced = torch.jit.trace(model, images(1))
    extra = {} if audit_json is None else {"audit.json": audit_json}
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path


# -- formats ----------------------------------------------------------------------------


def test_torchscript_round_trip_reads_metadata_and_normalises_inside(
    helper: ModuleType, tmp_path: Path
) -> None:
    model = trained(helper)
    audit_json = json.dumps(
        {"name": "tiny", "num_classes": 4, "mean": MEAN, "std": STD, "lipschitz": 12.5}
    )
    path = save_torchscript(model, tmp_path / "tiny.pt", audit_json)

    loaded = load_model(path)

    assert loaded.format == "torchscript"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.metadata == ModelMetadata(
        name="tiny", num_classes=4, mean=MEAN, std=STD, lipschitz=12.5
    )
    assert loaded.embedded_metadata == loaded.metadata
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(normalised(x)))
    assert loaded.module.resized_output is False


def test_torchscript_without_metadata_has_empty_metadata(
    helper: ModuleType, tmp_path: Path
) -> None:
    path = save_torchscript(trained(helper), tmp_path / "plain.pt")
    loaded = load_model(path)
    assert loaded.metadata == ModelMetadata()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained(helper)(x))


def test_invalid_embedded_json_names_file_and_member(helper: ModuleType, tmp_path: Path) -> None:
    path = save_torchscript(trained(helper), tmp_path / "bad.pt", "{not json")
    with pytest.raises(ConfigError, match=r"bad\.pt: embedded audit\.json is not valid JSON"):
        load_model(path)


def test_bad_embedded_key_names_file_member_and_key(helper: ModuleType, tmp_path: Path) -> None:
    path = save_torchscript(trained(helper), tmp_path / "bad.pt", '{"nmae": "x"}')
    with pytest.raises(ConfigError, match=r"bad\.pt \(audit\.json\), key 'nmae': unknown"):
        load_model(path)


def test_caller_metadata_overrides_embedded(helper: ModuleType, tmp_path: Path) -> None:
    path = save_torchscript(trained(helper), tmp_path / "m.pt", json.dumps({"name": "file"}))
    loaded = load_model(path, metadata=ModelMetadata(mean=MEAN, std=STD))
    assert loaded.embedded_metadata == ModelMetadata(name="file")
    assert loaded.metadata == ModelMetadata(name="file", mean=MEAN, std=STD)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained(helper)(normalised(x)))


def test_with_metadata_rewraps_the_same_model(helper: ModuleType, tmp_path: Path) -> None:
    loaded = load_model(save_torchscript(trained(helper), tmp_path / "m.pt"))
    renormalised = loaded.with_metadata(ModelMetadata(mean=MEAN, std=STD))
    assert renormalised.module.model is loaded.module.model
    assert renormalised.metadata.mean == MEAN
    assert loaded.metadata == ModelMetadata()  # the original is untouched
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(renormalised.module(x), loaded.module(normalised(x)))


def test_export_round_trip_reads_extra_files(helper: ModuleType, tmp_path: Path) -> None:
    model = trained(helper)
    x = images(1)
    program = torch.export.export(model, (x,))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path, extra_files={"audit.json": json.dumps({"num_classes": 4})})

    loaded = load_model(path)

    assert loaded.format == "export"
    assert loaded.metadata == ModelMetadata(num_classes=4)
    before = fingerprint_module(loaded.module.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))
    assert fingerprint_module(loaded.module.model) == before


def test_training_mode_captures_are_refused(helper: ModuleType, tmp_path: Path) -> None:
    # Traced or exported in train mode, BatchNorm keeps updating its statistics whatever
    # eval() says; auditing such a file would mutate it and depend on batch composition.
    model = trained(helper).train()
    traced = torch.jit.trace(model, images(2), check_trace=False)
    torch.jit.save(traced, str(tmp_path / "train.pt"))
    with pytest.raises(ModelError, match=r"train\.pt was traced while the model was in training"):
        load_model(tmp_path / "train.pt")

    torch.export.save(torch.export.export(model, (images(2),)), tmp_path / "train.pt2")
    with pytest.raises(ModelError, match=r"train\.pt2 was exported while .* training mode"):
        load_model(tmp_path / "train.pt2")


def test_scripted_model_saved_in_train_mode_is_put_in_eval(
    helper: ModuleType, tmp_path: Path
) -> None:
    # Scripting keeps `self.training` dynamic, so eval() works and the file is accepted.
    model = trained(helper)
    torch.jit.save(torch.jit.script(model.train()), str(tmp_path / "scripted.pt"))
    loaded = load_model(tmp_path / "scripted.pt")
    before = fingerprint_module(loaded.module.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), model.eval()(images()))
    assert fingerprint_module(loaded.module.model) == before


@pytest.mark.parametrize("nested", [None, "state_dict", "model"])
def test_state_dict_round_trip_with_factory(
    helper: ModuleType, tmp_path: Path, nested: str | None
) -> None:
    model = trained(helper)
    state = model.state_dict()
    payload = state if nested is None else {nested: state, "epoch": 7}
    torch.save(payload, tmp_path / "weights.pth")

    loaded = load_model(tmp_path / "weights.pth", factory=FACTORY)

    assert loaded.format == "state_dict"
    assert isinstance(loaded.module.model, helper.TinySeg)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), model(images()))


def test_legacy_torch_save_format_is_recognised(helper: ModuleType, tmp_path: Path) -> None:
    model = trained(helper)
    torch.save(model.state_dict(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    loaded = load_model(tmp_path / "old.pth", factory=FACTORY)
    assert loaded.format == "state_dict"
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), model(images()))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"epoch": 3, "optimizer": {}}, r"holds a dict that is not a state dict \(keys: epoch"),
        ([torch.zeros(2)], r"holds a list, not a model or a state dict"),
    ],
)
def test_torch_save_of_something_else(tmp_path: Path, payload: object, message: str) -> None:
    torch.save(payload, tmp_path / "thing.pt")
    with pytest.raises(ModelError, match=r"thing\.pt " + message):
        load_model(tmp_path / "thing.pt", factory=FACTORY)


def test_safetensors_round_trip_with_factory_and_header_metadata(
    helper: ModuleType, tmp_path: Path
) -> None:
    model = trained(helper)
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path), metadata={"audit.json": json.dumps({"name": "st"})})

    loaded = load_model(path, factory=FACTORY)

    assert loaded.format == "safetensors"
    assert loaded.metadata == ModelMetadata(name="st")
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), model(images()))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_without_factory_explain_the_option(
    helper: ModuleType, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"weights{suffix}"
    state = trained(helper).state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    with pytest.raises(ModelError, match=r"weights\.\w+ is a .*--audit-factory package\.module"):
        load_model(path)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("segaudit_model_factories.build", r"invalid model factory .*'package\.module:function'"),
        ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz'"),
        (f"{HELPER}:missing", rf"'{HELPER}' has no attribute 'missing'"),
        (f"{HELPER}:broken", r"failed while building .*RuntimeError: needs a GPU"),
        (f"{HELPER}:not_a_module", r"returned int, not a torch\.nn\.Module"),
        (
            f"{HELPER}:build_five",
            r"do not fit the model built by factory .*: shape mismatches \(2\): "
            r"head\.bias \(file \[4\], model \[5\]\), head\.weight",
        ),
    ],
)
def test_bad_factory_names_factory_and_file(
    helper: ModuleType, tmp_path: Path, factory: str, message: str
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(trained(helper).state_dict(), path)
    with pytest.raises(ModelError, match=message) as info:
        load_model(path, factory=factory)
    assert str(path) in str(info.value)
    assert factory in str(info.value)


def test_missing_and_unexpected_keys_are_listed(helper: ModuleType, tmp_path: Path) -> None:
    state = trained(helper).state_dict()
    state["extra.weight"] = state.pop("head.bias")
    torch.save(state, tmp_path / "weights.pth")
    pattern = r"missing keys \(1\): head\.bias; unexpected keys \(1\): extra\.weight"
    with pytest.raises(ModelError, match=pattern):
        load_model(tmp_path / "weights.pth", factory=FACTORY)


# -- pickles ----------------------------------------------------------------------------


class TouchOnUnpickle:
    """Unpickling this object would create ``marker``: stands in for hostile code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(TouchOnUnpickle(marker), tmp_path / "evil.pt")
    pattern = (
        r"evil\.pt is a pickled Python object .* would execute arbitrary code .*"
        r"--audit-trust-pickle \(or set trust_pickle = true under \[tool\.segaudit\]\).*"
        r"torch\.jit\.save"
    )
    with pytest.raises(ModelError, match=pattern):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_pickled_module_needs_trust_and_then_loads(helper: ModuleType, tmp_path: Path) -> None:
    model = trained(helper)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match=r"whole\.pt is a pickled Python object"):
        load_model(tmp_path / "whole.pt")

    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)

    assert loaded.format == "pickle"
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), model(images()))


def test_trust_pickle_still_reads_state_dicts_safely(helper: ModuleType, tmp_path: Path) -> None:
    torch.save(trained(helper).state_dict(), tmp_path / "weights.pth")
    loaded = load_model(tmp_path / "weights.pth", factory=FACTORY, trust_pickle=True)
    assert loaded.format == "state_dict"


# -- unreadable files -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file .*nope\.pt does not exist; expected a"):
        load_model(tmp_path / "nope.pt")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model path .* is a directory; expected a single file"):
        load_model(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.pt is empty; expected a TorchScript file"):
        load_model(tmp_path / "empty.pt")


def test_unknown_bytes(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(ModelError, match=r"model\.onnx is not a format SegAudit recognises"):
        load_model(tmp_path / "model.onnx")


def test_truncated_torchscript(helper: ModuleType, tmp_path: Path) -> None:
    data = save_torchscript(trained(helper), tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut\.pt looks like a zip archive but cannot be read"):
        load_model(tmp_path / "cut.pt")


def test_corrupt_member_in_torch_save_archive(helper: ModuleType, tmp_path: Path) -> None:
    torch.save(trained(helper).state_dict(), tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as source:
        members = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as target:
        for name, data in members.items():
            target.writestr(name, b"garbage" if name.endswith("data.pkl") else data)
    with pytest.raises(ModelError, match=r"bad\.pth"):
        load_model(tmp_path / "bad.pth", factory=FACTORY)


def test_truncated_safetensors(helper: ModuleType, tmp_path: Path) -> None:
    save_file(trained(helper).state_dict(), str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    with pytest.raises(ModelError, match=r"cannot read safetensors file .*cut\.safetensors"):
        load_model(tmp_path / "cut.safetensors", factory=FACTORY)


def test_foreign_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "photos.pt", "w") as archive:
        archive.writestr("holiday/beach.jpg", b"jpeg")
    with pytest.raises(ModelError, match=r"photos\.pt is a zip archive but not a PyTorch one"):
        load_model(tmp_path / "photos.pt")


# -- the wrapper ------------------------------------------------------------------------


class Returns(nn.Module):
    """Wraps a 1x1 conv and packages its logits as ``kind`` describes."""

    def __init__(self, kind: str, stride: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> object:
        y = self.conv(x)
        packaged: dict[str, object] = {
            "tensor": y,
            "torchvision": {"out": y, "aux": y * 0},
            "single": {"seg": y, "note": "not a tensor"},
            "ambiguous": {"a": y, "b": y},
            "tuple": (y, y * 0),
            "list": [y],
            "flat": y.flatten(1),
            "labels": y.argmax(1, keepdim=True),
            "string": "logits",
        }
        return packaged[self.kind]


@pytest.mark.parametrize("kind", ["tensor", "torchvision", "single", "tuple", "list"])
def test_wrapper_accepts_common_output_shapes(kind: str) -> None:
    torch.manual_seed(0)
    model = Returns(kind)
    with torch.no_grad():
        out = SegmentationWrapper(model)(images())
        torch.testing.assert_close(out, model.conv(images()))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("ambiguous", r"'m\.pt' returned a dict with keys \['a', 'b'\] and no 'out'"),
        ("flat", r"'m\.pt' returned a tensor of shape \(2, 1024\) .*expected 4-D logits"),
        ("labels", r"'m\.pt' returned torch\.int64 values; expected float logits"),
        ("string", r"'m\.pt' returned str; expected a logits tensor"),
    ],
)
def test_wrapper_rejects_unusable_outputs(kind: str, message: str) -> None:
    with pytest.raises(ModelError, match=message), torch.no_grad():
        SegmentationWrapper(Returns(kind), name="m.pt")(images())


def test_wrapper_upsamples_low_resolution_output() -> None:
    torch.manual_seed(0)
    model = Returns("tensor", stride=4)
    wrapper = SegmentationWrapper(model)
    assert wrapper.resized_output is False
    with torch.no_grad():
        out = wrapper(images(size=32))
        expected = F.interpolate(
            model.conv(images(size=32)), size=(32, 32), mode="bilinear", align_corners=False
        )
    assert out.shape == (2, 4, 32, 32)
    torch.testing.assert_close(out, expected)
    assert wrapper.resized_output is True


def test_wrapper_rejects_images_that_are_not_n3hw() -> None:
    wrapper = SegmentationWrapper(Returns("tensor"), name="m.pt")
    with pytest.raises(EvaluationError, match=r"'m\.pt' expects float images N x 3 x H x W"):
        wrapper(torch.rand(3, 16, 16))
    with pytest.raises(EvaluationError, match=r"torch\.uint8 tensor of shape \(1, 3, 4, 4\)"):
        wrapper(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_wrapper_holds_the_model_in_eval_mode(helper: ModuleType) -> None:
    model = trained(helper).train()
    wrapper = SegmentationWrapper(model)
    assert not any(m.training for m in model.modules())
    wrapper.train()
    assert wrapper.training and not model.training
    model.train()  # behind the wrapper's back
    with torch.no_grad():
        wrapper(images())
    assert not any(m.training for m in model.modules())


def test_wrapped_inference_and_input_gradients_leave_the_model_unchanged(
    helper: ModuleType,
) -> None:
    model = trained(helper).train()
    model.conv.bias.requires_grad_(False)  # a user's frozen layer must stay frozen
    in_train_mode = fingerprint_module(model, include_grads=True)

    wrapper = SegmentationWrapper(model, ModelMetadata(mean=MEAN, std=STD))
    wrapped = fingerprint_module(model, include_grads=True)
    x = images().requires_grad_(True)
    (grad,) = torch.autograd.grad(wrapper(x).logsumexp(1).sum(), x)
    with torch.no_grad():
        wrapper(images(4))

    after = fingerprint_module(model, include_grads=True)
    assert grad.shape == x.shape and bool(grad.abs().sum() > 0)
    assert after == wrapped
    # Wrapping flips only the training flags; weights, BatchNorm statistics and
    # requires_grad flags are exactly what the user handed over.
    changed = {k for k in in_train_mode if in_train_mode[k] != after[k]}
    assert changed and all(k.startswith("training:") for k in changed)
    assert after["requires_grad:conv.bias"] == "False"
    assert after["requires_grad:conv.weight"] == "True"
    assert after["grad:conv.weight"] == "none"


def test_fingerprint_sees_a_changed_buffer(helper: ModuleType) -> None:
    model = trained(helper)
    before = fingerprint_module(model)
    model.train()(images())  # a train-mode forward updates the running statistics
    model.eval()
    after = fingerprint_module(model)
    assert {k for k in before if before[k] != after[k]} == {
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    }


def test_torchvision_dict_output_through_torchscript(tmp_path: Path) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    x = images(1, size=32)
    traced = torch.jit.trace(model, x, strict=False, check_trace=False)
    torch.jit.save(traced, str(tmp_path / "lraspp.pt"))

    loaded = load_model(tmp_path / "lraspp.pt")

    # The profiling executor's first-call optimisation costs seconds and proves nothing here.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        out = loaded.module(x)
        torch.testing.assert_close(out, model(x)["out"])
    assert out.shape == (1, 5, 32, 32)


def test_bundled_demo_model_loads_as_torchscript() -> None:
    path = demo_model_file()
    assert path.parent == Path(__file__).resolve().parent.parent / "audit" / "assets"
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel) and loaded.format == "torchscript"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.no_grad():
        assert loaded.module(images(1, size=64)).shape[-2:] == (64, 64)

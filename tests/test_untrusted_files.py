"""A model file is untrusted input: every place a loader could run code from it, and that none does.

``SURFACES`` is the attack surface, one row per place where torch (or SegAudit) would
unpickle, evaluate or execute part of a model file.  Each row builds a crafted file whose
payload creates a marker file when it runs, then loads it without ``trust_pickle``: the file is
refused with an error naming it (and the archive member at fault), or, where the dangerous part
is something the harness never needs, loaded without it; either way the marker never appears.

Crafted files start as honest ones written by torch, with members rewritten by ``zipfile``, so
that these tests know as little of torch's internals as the attacks need.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import pathlib
import pickle
import struct
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from audit.errors import ConfigError, ModelError, SegAuditError
from audit.model import load_model
from conftest import TINY_DATA, user_module

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    # torch.export.load warns while it deserializes the crafted graphs.
    pytest.mark.filterwarnings("ignore:Unable to execute the generated python source"),
]

HELPER = "segaudit_untrusted_factories"
FACTORY = f"{HELPER}:build"
HELPER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            # neither parameter nor buffer: a constant in exported and traced files
            self.offset = torch.tensor([0.5, -0.5, 0.25, 0.0]).view(1, 4, 1, 1)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.offset


    def build():
        return Net()
    """
)


@pytest.fixture(autouse=True)
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The user's own module: factories are imported by name."""
    return user_module(HELPER, HELPER_SOURCE, tmp_path / "helper_pkg", monkeypatch)


def net() -> nn.Module:
    torch.manual_seed(0)
    model = importlib.import_module(HELPER).build()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    return model.eval()


def images(n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


# -- payloads ---------------------------------------------------------------------------


class Touch:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def payload(marker: Path, wrapped: object = None) -> bytes:
    """A pickle that touches ``marker``; ``wrapped`` puts the call inside another value."""
    return pickle.dumps(Touch(marker) if wrapped is None else wrapped, protocol=2)


def python_payload(marker: Path) -> str:
    """The same, as Python source (for the parts torch evaluates rather than unpickles)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


# -- rewriting archives -----------------------------------------------------------------


class Members(dict[str, bytes]):
    """An archive's members by name; ``rel`` names them below the archive's top folder."""

    @property
    def root(self) -> str:
        return next(iter(self)).split("/", 1)[0] + "/"

    def rel(self, name: str) -> str:
        return self.root + name

    def json(self, name: str) -> dict:
        return json.loads(self[self.rel(name)])

    def set_json(self, name: str, value: dict) -> None:
        self[self.rel(name)] = json.dumps(value).encode()


def rewrite(source: Path, target: Path, change: Callable[[Members], object]) -> Path:
    with zipfile.ZipFile(source) as archive:
        members = Members((name, archive.read(name)) for name in archive.namelist())
    change(members)
    write_zip(target, members.items())
    return target


def write_zip(target: Path, items: object) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate-member case
        with zipfile.ZipFile(target, "w") as archive:
            for name, data in items:
                archive.writestr(name, data)
    return target


# -- honest files -------------------------------------------------------------------------


def honest_export(path: Path, extra_files: dict[str, str] | None = None) -> Path:
    program = torch.export.export(net(), (images(),))
    torch.export.save(program, path, extra_files=extra_files)
    return path


def honest_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.trace(net(), images()), str(path))
    return path


# -- crafted files: one builder per surface ---------------------------------------------


def torchscript_member(member: str) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, marker: Path) -> Path:
        honest = honest_torchscript(tmp / "honest.pt")

        def change(m: Members) -> None:
            m[m.rel(member)] = payload(marker)

        return rewrite(honest, tmp / "crafted.pt", change)

    return build


def export_change(change: Callable[[Members, Path], object]) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, marker: Path) -> Path:
        honest = honest_export(tmp / "honest.pt2")
        return rewrite(honest, tmp / "crafted.pt2", lambda m: change(m, marker))

    return build


def sample_inputs(m: Members, marker: Path) -> None:
    # Unpickled, the payload leaves valid sample inputs behind, so the load succeeds.
    m[m.rel("data/sample_inputs/model.pt")] = payload(marker, wrapped=((Touch(marker),), {}))


def pickled_weight(m: Members, marker: Path) -> None:
    config = m.json("data/weights/model_weights_config.json")
    config["config"]["evil"] = {
        "path_name": "weight_evil",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    m.set_json("data/weights/model_weights_config.json", config)
    m[m.rel("data/weights/weight_evil")] = payload(marker)


def pickled_constant(file_name: str) -> Callable[[Members, Path], None]:
    def change(m: Members, marker: Path) -> None:
        config = m.json("data/constants/model_constants_config.json")
        entry = {"path_name": file_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
        config["config"]["evil"] = entry
        m.set_json("data/constants/model_constants_config.json", config)
        m[m.rel(f"data/constants/{file_name}")] = payload(marker)

    return change


def legacy_payload(member: str) -> Callable[[Members, Path], None]:
    def change(m: Members, marker: Path) -> None:
        m[m.rel(member)] = payload(marker)

    return change


def legacy_layout(tmp: Path, marker: Path) -> Path:
    # torch.export.load falls back to the torch 2.7 layout (top-level members) when the
    # current one fails to load; that layout unpickles its state dict and constants.
    honest = honest_export(tmp / "honest.pt2")
    with zipfile.ZipFile(honest) as archive:
        program = archive.read(archive.namelist()[0].split("/")[0] + "/models/model.json")
    return write_zip(
        tmp / "crafted.pt2",
        [
            ("pkg/archive_format", b"pt2"),
            ("version", ".".join(map(str, torch._export.serde.schema.SCHEMA_VERSION)).encode()),
            ("serialized_exported_program.json", program),
            ("serialized_state_dict.pt", payload(marker)),
            ("serialized_constants.pt", payload(marker)),
            ("serialized_example_inputs.pt", payload(marker)),
        ],
    )


def sympy_expression(m: Members, marker: Path) -> None:
    program = m.json("models/model.json")
    tensor = next(iter(program["graph_module"]["graph"]["tensor_values"].values()))
    expr = f"{python_payload(marker)} or 1"
    tensor["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 1}}}
    m.set_json("models/model.json", program)


def guard_code(m: Members, marker: Path) -> None:
    program = m.json("models/model.json")
    program["guards_code"] = [f"{python_payload(marker)} is None"]
    m.set_json("models/model.json", program)


def callable_argument(m: Members, marker: Path) -> None:
    # A higher-order operator that calls the function it is given, given os.popen.
    program = m.json("models/model.json")
    program["graph_module"]["graph"]["nodes"].insert(
        0,
        {
            "target": "torch.ops.higher_order.wrap_with_set_grad_enabled",
            "inputs": [
                {"name": "", "arg": {"as_bool": True}, "kind": 1},
                {"name": "", "arg": {"as_operator": "torch.serialization.os.popen"}, "kind": 1},
                {"name": "", "arg": {"as_string": f"touch {marker}"}, "kind": 1},
            ],
            "outputs": [{"as_none": True}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
            "name": "evil",
        },
    )
    m.set_json("models/model.json", program)


def extra_member(member: str) -> Callable[[Members, Path], None]:
    def change(m: Members, marker: Path) -> None:
        m[m.rel(member)] = payload(marker)

    return change


def duplicate_config(tmp: Path, marker: Path) -> Path:
    # Two copies of the weights config: one reader may check the first, another use the last.
    honest = honest_export(tmp / "honest.pt2")
    with zipfile.ZipFile(honest) as archive:
        items = [(name, archive.read(name)) for name in archive.namelist()]
    members = Members(items)
    pickled_weight(members, marker)
    config = members.rel("data/weights/model_weights_config.json")
    return write_zip(tmp / "crafted.pt2", [*items, (config, members[config])])


def torch_save(obj_of: Callable[[Path], object], **kwargs: object) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, marker: Path) -> Path:
        torch.save(obj_of(marker), tmp / "crafted.pt", **kwargs)
        return tmp / "crafted.pt"

    return build


def raw_pickle(tmp: Path, marker: Path) -> Path:
    (tmp / "crafted.pt").write_bytes(payload(marker))
    return tmp / "crafted.pt"


def torch_save_data_pkl(tmp: Path, marker: Path) -> Path:
    torch.save(net().state_dict(), tmp / "honest.pt")

    def change(m: Members) -> None:
        m[m.rel("data.pkl")] = payload(marker)

    return rewrite(tmp / "honest.pt", tmp / "crafted.pt", change)


def checkpoint(marker: Path) -> dict:
    return {
        "model": net().state_dict(),
        "optimizer": {
            "state": {0: {"step": Touch(marker)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}],
        },
        "epoch": 3,
    }


def safetensors_file(tmp: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path = tmp / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def safetensors_metadata(value: object) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, marker: Path) -> Path:
        save_file(net().state_dict(), str(tmp / "honest.safetensors"))
        raw = (tmp / "honest.safetensors").read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
        header["__metadata__"] = {"audit.json": value(marker) if callable(value) else value}
        return safetensors_file(tmp, header, raw[8 + size :])

    return build


def safetensors_offsets(tmp: Path, marker: Path) -> Path:
    header = {"w": {"dtype": "U8", "shape": [1 << 20], "data_offsets": [0, 1 << 20]}}
    return safetensors_file(tmp, header, payload(marker))


# -- the attack surface -------------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """One place a loader could run code from the file.

    ``refused``: the error and the pattern its message must match (besides the file name),
    or ``None`` when the loader drops the dangerous part and the model loads and runs.
    ``torch_runs_it``: plain ``torch.export.load`` (and running its module) runs the payload,
    which :func:`test_plain_torch_runs_the_payload` checks so that no row tests a dud.
    """

    id: str
    build: Callable[[Path, Path], Path]
    refused: tuple[type[SegAuditError], str] | None
    torch_runs_it: bool = False


# torch's weights_only unpickler names the global it refused.
REFUSED_PICKLE = (
    ModelError,
    r"crafted\.pt is a pickled Python .*Unsupported global: GLOBAL \S*getattr",
)

SURFACES = [
    # TorchScript: data.pkl and constants.pkl go through torch's C++ unpickler, which only
    # builds tensors, containers and TorchScript classes compiled from the archive's code/.
    Surface(
        "torchscript-data.pkl",
        torchscript_member("data.pkl"),
        (ModelError, r"crafted\.pt is a TorchScript .*/data\.pkl refers to __builtin__\.getattr"),
    ),
    Surface(
        "torchscript-constants.pkl",
        torchscript_member("constants.pkl"),
        (ModelError, r"crafted\.pt is a TorchScript .*/constants\.pkl refers to __builtin__\."),
    ),
    # torch.export .pt2 archives
    Surface(
        "export-sample-inputs",  # unpickled with a weights_only=False fallback
        export_change(sample_inputs),
        None,
        torch_runs_it=True,
    ),
    Surface(
        "export-pickled-weight",  # use_pickle: torch.load(weights_only=False)
        export_change(pickled_weight),
        (ModelError, r"data/weights/weight_evil \(weight 'evil', stored pickled\)"),
        torch_runs_it=True,
    ),
    Surface(
        "export-pickled-tensor-constant",  # use_pickle: torch.load(weights_only=False)
        export_change(pickled_constant("tensor_evil")),
        (ModelError, r"data/constants/tensor_evil \(constant 'evil', a tensor stored pickled\)"),
        torch_runs_it=True,
    ),
    Surface(
        "export-torchbind-constant",  # torch._C._pickle_load_obj
        export_change(pickled_constant("custom_obj_evil")),
        (ModelError, r"data/constants/custom_obj_evil \(constant 'evil', a pickled TorchBind"),
    ),
    Surface(
        "export-opaque-constant",  # pickle.loads
        export_change(pickled_constant("opaque_obj_evil")),
        (ModelError, r"data/constants/opaque_obj_evil \(constant 'evil', a pickled Python"),
        torch_runs_it=True,
    ),
    Surface(
        "export-legacy-weights",  # read whole, then unpickled with the fallback
        export_change(legacy_payload("data/weights/model.pt")),
        (ModelError, r"data/weights/model\.pt \(weights in the legacy pickled format\)"),
        torch_runs_it=True,
    ),
    Surface(
        "export-legacy-constants",
        export_change(legacy_payload("data/constants/model.pt")),
        (ModelError, r"data/constants/model\.pt \(constants in the legacy pickled format\)"),
        torch_runs_it=True,
    ),
    Surface(
        "export-legacy-layout",  # torch.export.load's fallback to the 2.7 layout
        legacy_layout,
        (ModelError, r"must all lie in one top folder.*legacy loader, which unpickles"),
        torch_runs_it=True,
    ),
    Surface(
        "export-shape-expression",  # sympy.sympify evaluates it as Python
        export_change(sympy_expression),
        (ModelError, r"models/model\.json holds the symbolic shape expression"),
        torch_runs_it=True,
    ),
    Surface(
        "export-guard-code",  # exec()d by ExportedProgram.module() given sample inputs
        export_change(guard_code),
        None,
        torch_runs_it=True,
    ),
    Surface(
        "export-callable-argument",  # a graph node handing os.popen to an operator
        export_change(callable_argument),
        (ModelError, r"node '\w+' of the exported graph passes the Python function os\.popen"),
    ),
    Surface(
        "export-aotinductor",  # compiled code torch loads as a shared library
        export_change(extra_member("data/aotinductor/model/evil.so")),
        (ModelError, r"data/aotinductor/model/evil\.so \(AOTInductor compiled code"),
    ),
    Surface(
        "export-unknown-member",  # whatever a later torch might unpickle
        export_change(extra_member("data/future/evil.pkl")),
        (ModelError, r"data/future/evil\.pkl \(a member SegAudit does not know"),
    ),
    Surface(
        "export-member-stored-twice",
        duplicate_config,
        (ModelError, r"members stored twice \(.*model_weights_config\.json"),
    ),
    # torch.save files: torch.load(weights_only=True), whose unpickler refuses any global
    # but tensor rebuilders and plain containers, and so raises before calling anything.
    Surface("raw-pickle", raw_pickle, REFUSED_PICKLE),
    Surface(
        "torch-save-data.pkl",
        torch_save_data_pkl,
        REFUSED_PICKLE,
    ),
    Surface(
        "torch-save-legacy-format",
        torch_save(
            lambda marker: {"w": torch.zeros(1), "evil": Touch(marker)},
            _use_new_zipfile_serialization=False,
        ),
        REFUSED_PICKLE,
    ),
    Surface(
        "state-dict-entry",
        torch_save(lambda marker: {**net().state_dict(), "evil": Touch(marker)}),
        REFUSED_PICKLE,
    ),
    Surface(
        "checkpoint-optimizer-entry",
        torch_save(checkpoint),
        REFUSED_PICKLE,
    ),
    # safetensors: a JSON header parsed by the library's Rust code; SegAudit reads only the
    # audit.json string in its metadata, as JSON.
    Surface(
        "safetensors-metadata-pickle",
        safetensors_metadata(lambda marker: payload(marker).decode("latin-1")),
        (ConfigError, r"crafted\.safetensors: embedded audit\.json is not valid JSON"),
    ),
    Surface(
        "safetensors-metadata-not-a-string",
        safetensors_metadata({"__reduce__": ["pathlib.Path.touch"]}),
        (ModelError, r"cannot read safetensors file .*crafted\.safetensors"),
    ),
    Surface(
        "safetensors-offsets-past-the-end",
        safetensors_offsets,
        (ModelError, r"cannot read safetensors file .*crafted\.safetensors"),
    ),
]


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.id)
def test_untrusted_file_runs_nothing(surface: Surface, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = surface.build(tmp_path, marker)

    if surface.refused is None:
        loaded = load_model(path, factory=FACTORY)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(images()), net()(images()))
    else:
        error, pattern = surface.refused
        with pytest.raises(error) as caught:
            load_model(path, factory=FACTORY)
        assert type(caught.value) is error
        assert path.name in str(caught.value)
        assert caught.match(pattern)

    assert not marker.exists()


@pytest.mark.parametrize("surface", [s for s in SURFACES if s.torch_runs_it], ids=lambda s: s.id)
def test_plain_torch_runs_the_payload(surface: Surface, tmp_path: Path) -> None:
    # The control: torch's own loader on the same file runs the payload, so each row above
    # guards a real hole. A torch that closes one skips here instead of failing.
    marker = tmp_path / "marker"
    path = surface.build(tmp_path, marker)
    with contextlib.suppress(Exception):  # the payloads break the program after running
        torch.export.load(path).module()(images())
    if not marker.exists():
        pytest.skip(f"torch {torch.__version__} no longer runs the {surface.id} payload")


@pytest.mark.parametrize(
    "extra_files",
    [None, {"audit.json": json.dumps({"num_classes": 4})}, {"audit.json": "", "notes.txt": "x"}],
    ids=["no-extra-files", "audit.json", "audit.json-and-another"],
)
def test_honest_export_loads_and_runs(tmp_path: Path, extra_files: dict | None) -> None:
    path = honest_export(tmp_path / "honest.pt2", extra_files)
    loaded = load_model(path)
    assert loaded.format == "export"
    expected_classes = 4 if extra_files and extra_files["audit.json"] else None
    assert loaded.metadata.num_classes == expected_classes
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), net()(images()))


def test_honest_dynamic_shape_export_passes_the_expression_check(tmp_path: Path) -> None:
    # torch writes shape expressions (sympy srepr, e.g. FloorDiv(Symbol('s0', ...), 2));
    # the check that keeps code out of them must let all of these through.
    class Strided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.down(x)
            return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear")

    model = Strided().eval()
    auto = torch.export.Dim.AUTO
    program = torch.export.export(
        model, (torch.rand(2, 3, 32, 48),), dynamic_shapes={"x": {0: auto, 2: auto, 3: auto}}
    )
    torch.export.save(program, tmp_path / "dynamic.pt2")
    with zipfile.ZipFile(tmp_path / "dynamic.pt2") as archive:
        assert b"expr_str" in archive.read("dynamic/models/model.json")

    loaded = load_model(tmp_path / "dynamic.pt2")
    for shape in [(1, 3, 16, 24), (3, 3, 40, 30)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), model(x))


def pickled_weight_export(tmp_path: Path) -> Path:
    """An honest file whose first weight is stored pickled, as torch does for tensor subclasses."""

    def change(m: Members) -> None:
        config = m.json("data/weights/model_weights_config.json")
        name, entry = next(iter(config["config"].items()))
        entry["use_pickle"] = True
        buffer = io.BytesIO()
        torch.save(nn.Parameter(net().state_dict()[name]), buffer)  # as torch.export.save does
        m[m.rel("data/weights/" + entry["path_name"])] = buffer.getvalue()
        m.set_json("data/weights/model_weights_config.json", config)

    return rewrite(honest_export(tmp_path / "honest.pt2"), tmp_path / "pickled.pt2", change)


def test_pickled_weights_need_trust_and_then_load(tmp_path: Path) -> None:
    path = pickled_weight_export(tmp_path)
    with pytest.raises(
        ModelError, match=r"pickled\.pt2 .*/data/weights/weight_0 \(weight 'conv\.weight', stored"
    ):
        load_model(path)

    loaded = load_model(path, trust_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), net()(images()))


def test_honest_checkpoint_with_optimizer_entries_loads(tmp_path: Path) -> None:
    model = net()
    optimizer = torch.optim.Adam(model.parameters())
    model(images()).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}
    torch.save(state, tmp_path / "checkpoint.pt")

    loaded = load_model(tmp_path / "checkpoint.pt", factory=FACTORY)

    assert loaded.format == "state_dict"
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images()), model.eval()(images()))


@pytest.mark.parametrize(
    "surface",
    [s for s in SURFACES if s.id in ("export-pickled-weight", "export-shape-expression")],
    ids=lambda s: s.id,
)
def test_audit_of_a_crafted_archive_errors_runs_nothing_and_writes_the_report(
    surface: Surface, pytester: pytest.Pytester, run_audit
) -> None:
    marker = pytester.path / "marker"
    path = surface.build(pytester.path, marker)
    pytester.makefile(
        ".toml",
        gate='[[claims]]\nid = "miou"\nkind = "clean"\nmetric = "miou"\nmin = 0.0\n',
    )
    result = run_audit(
        "--audit", str(path), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*model file {path}*--audit-trust-pickle*"])
    assert not marker.exists()
    report = pytester.path / "audit-report"
    record = json.loads((report / "results.json").read_text())
    assert record["status"] == "error" and record["claims"][0]["verdict"] == "error"
    assert path.name in record["claims"][0]["message"]
    assert record["provenance"]["trust_pickle"] == {"enabled": False, "source": "default"}
    assert (report / "index.html").is_file()

"""Fixtures shared by SegAudit's own tests: tiny models on disk and an isolated pytester."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

# pytester's in-process runs drop the modules first imported inside them; torch's distributed
# package registers C++ operators on import and cannot be imported twice, so it is imported
# here, once, before any such run (torch.testing imports it lazily).  Builds without
# distributed support skip it.
with contextlib.suppress(ImportError):
    import torch.distributed.tensor


# torch.export's save and load import modules that register global state (operator
# libraries, cache artifact types) and cannot be imported twice either: one round trip of
# a tiny program here imports them all before any in-process run can drop them.
def _import_export_machinery() -> None:
    import io

    program = torch.export.export(nn.Conv2d(3, 2, 1).eval(), (torch.rand(1, 3, 4, 4),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    torch.export.load(buffer)


_import_export_machinery()

#: small synthetic data so plugin runs take seconds
TINY_DATA = "synthetic?n=4&size=32x64"


class ColourNet(nn.Module):
    """A per-pixel linear model: deterministic, tiny, and honest about its 8 classes."""

    def __init__(self, num_classes: int = 8, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


class NaNNet(nn.Module):
    """Returns NaN logits for images whose mean is above 0.5 (some samples, not all)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        poison = (x.mean(dim=(1, 2, 3), keepdim=True) > 0.0).float() * float("nan")
        return out + poison


def save_torchscript(module: nn.Module, path: Path, metadata: dict | None = None) -> Path:
    torch.manual_seed(0)
    traced = torch.jit.trace(module.eval(), torch.rand(1, 3, 32, 64))
    extra = {"audit.json": json.dumps(metadata)} if metadata is not None else {}
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A traced 8-class per-pixel model with embedded metadata."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    return save_torchscript(ColourNet(), path, {"name": "tiny", "num_classes": 8})


@pytest.fixture
def run_audit(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., pytest.RunResult]:
    """Run pytest with only the SegAudit plugin, in-process, in pytester's directory."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\n")  # pins rootdir, so node ids print as "suite::claim"

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest("-p", "audit.plugin", "-p", "no:cacheprovider", *args)

    return run


def user_module(
    name: str, source: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    """``source`` as the importable module ``name``: the user's own code, which factories and
    pickles refer to by name.  It leaves ``sys.modules`` and ``sys.path`` with the test."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def report_files(folder: Path) -> tuple[dict, str]:
    """The two files every run leaves in its report ``folder``, whatever happened: the
    record (parsed) and the HTML report."""
    assert (folder / "results.json").is_file() and (folder / "index.html").is_file()
    return json.loads((folder / "results.json").read_text()), (folder / "index.html").read_text()

"""Fixtures shared by SegAudit's own tests: tiny models on disk and an isolated pytester."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

# Imported here, before any in-process pytester run: those runs drop the modules they first
# imported when they end, and a later run that imported Hypothesis afresh beside the parts
# that stayed would hold two SearchStrategy classes ("Expected SearchStrategy but got ...").
import audit.evaluations  # noqa: F401
from audit.errors import InvalidRecord
from audit.schema import validate_record

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
#: marks a test that writes a results.json that is not a record on purpose (a malformed file
#: the reader must refuse, a hand-made fragment); the schema check below leaves it alone
HAND_MADE_RECORDS = "hand_made_records"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{HAND_MADE_RECORDS}(reason): the test writes results.json files by hand that need "
        "not follow the record's schema",
    )


@pytest.fixture(autouse=True)
def _records_follow_the_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, every ``results.json`` in its temporary folders must pass the record's
    JSON Schema: so every run the suite makes, in every way it ends, checks the schema."""
    yield
    if request.node.get_closest_marker(HAND_MADE_RECORDS) is not None:
        return
    used = getattr(request.node, "funcargs", None) or {}
    folders = [used["tmp_path"]] if isinstance(used.get("tmp_path"), Path) else []
    if isinstance(used.get("pytester"), pytest.Pytester):
        folders.append(used["pytester"].path)
    failures = []
    for folder in folders:
        for path in sorted(folder.rglob("results.json")):
            try:
                validate_record(json.loads(path.read_text(encoding="utf-8")), source=str(path))
            except (InvalidRecord, ValueError) as exc:
                failures.append(str(exc))
    if failures:
        pytest.fail("records the test left fail the schema:\n" + "\n".join(failures), pytrace=False)


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


def environment_outside_xdist() -> dict[str, str]:
    """This process's environment without pytest-xdist's variables: a test running in an
    xdist worker starts audits that must not believe they are workers themselves."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}

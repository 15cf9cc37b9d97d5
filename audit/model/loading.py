"""Load a model file of any supported format into a :class:`SegmentationWrapper`.

Formats are recognised from the file's content (see :mod:`audit.model.formats`).  A model
file is untrusted input: unless the user opts in with ``trust_pickle``, no part of it is
unpickled except by a restricted unpickler, and no Python source from it is evaluated (an
exported graph runs as Python code that torch generates from its operators, not as text
taken from the file).

- ``torch.save`` files (state dicts, checkpoints, pickled modules) are read with
  ``torch.load(weights_only=True)``, whose unpickler rebuilds tensors and plain containers
  and raises on any other global before calling it (globals that code in this process
  allowlisted with ``torch.serialization.add_safe_globals`` excepted).  A pickled module,
  or a checkpoint holding any object that unpickler does not rebuild, is refused.
- TorchScript archives: every pickled member is first checked, by reading its opcodes, for
  globals outside torch (:mod:`audit.model.pickle_scan`).  ``torch.jit.load`` then reads
  them with torch's C++ unpickler, which builds only tensors, containers and TorchScript
  classes compiled from the archive's own code, never Python objects.  That TorchScript
  code does run, on load (``__setstate__``) and in ``forward``: it can call operators
  registered in this process, but no Python function.
- ``torch.export`` archives: ``torch.export.load`` itself unpickles sample inputs with a
  full-unpickle fallback, unpickles weights and constants stored pickled, and evaluates
  the graph's shape expressions as Python, so it only ever reads a copy made by
  :mod:`audit.model.export_archive`, without sample inputs or stored guard code, with every
  shape expression checked, and with pickled weights and constants, AOTInductor code and
  members of unknown role refused.  The loaded graph may pass only torch operators.
- safetensors files are parsed by the safetensors library (a JSON header and raw bytes);
  SegAudit reads only the ``audit.json`` string of the header's metadata, as JSON.

With ``trust_pickle``, a ``torch.save`` file the restricted unpickler refuses is loaded with
``weights_only=False``, and an export archive's pickled weights, constants and unknown
members reach ``torch.export.load``: both run whatever code the file holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from audit.errors import ConfigError, ModelError
from audit.model import export_archive, formats, pickle_scan
from audit.model.frozen_training import export_training_ops, torchscript_training_ops
from audit.model.metadata import ModelMetadata, check_set_aside
from audit.model.wrapper import SegmentationWrapper

METADATA_MEMBER = "audit.json"
# How many state-dict keys an error message lists.
_SHOWN_KEYS = 8
# An embedded audit.json: its known keys, validated, and its unknown keys set aside for
# load_model to weigh against the user's metadata.
_Embedded = tuple[ModelMetadata, dict[str, Any]]


@dataclass
class LoadedModel:
    """A model ready to audit, with where it came from.

    ``metadata`` is what the wrapper normalises with: the file's embedded ``audit.json``
    merged with the ``metadata`` argument of :func:`load_model`, if any.
    ``embedded_metadata`` is the file's own, for provenance in reports.
    """

    module: SegmentationWrapper
    path: Path | None
    sha256: str
    format: str  # "torchscript" | "export" | "state_dict" | "safetensors" | "pickle"
    metadata: ModelMetadata
    embedded_metadata: ModelMetadata = field(default_factory=ModelMetadata)
    #: unknown keys of the embedded ``audit.json`` that the ``metadata`` argument replaced,
    #: ``{file's key: replacing key}``; their values were ignored (see ``check_set_aside``)
    ignored_embedded: dict[str, str] = field(default_factory=dict)

    def with_metadata(self, metadata: ModelMetadata) -> LoadedModel:
        """The same model rewrapped with ``metadata`` (new normalisation, same weights)."""
        wrapper = SegmentationWrapper(self.module.model, metadata, name=self.module.name)
        return dataclasses.replace(self, module=wrapper, metadata=metadata)


def load_model(
    path: str | Path,
    *,
    factory: str | None = None,
    trust_pickle: bool = False,
    metadata: ModelMetadata | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedModel:
    """Load ``path`` and wrap it; ``metadata`` overrides fields of the embedded metadata.

    An embedded key SegAudit does not know is an error unless ``metadata`` sets the key it
    resembles (``classes`` in the file, ``class_names`` given): then the file's is ignored.

    State dicts and ``.safetensors`` need ``factory="package.module:function"``, a
    function that builds the untrained ``nn.Module`` the weights belong to.
    """
    path = Path(path)
    _check_readable(path)
    try:
        kind = formats.sniff_format(path)
        digest = _sha256(path)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    parsed: _Embedded = (ModelMetadata(), {})
    if kind == formats.TORCHSCRIPT:
        model, parsed = _load_torchscript(path, trust_pickle, map_location)
        fmt = "torchscript"
    elif kind == formats.EXPORT:
        model, parsed = _load_export(path, trust_pickle, map_location)
        fmt = "export"
    elif kind == formats.SAFETENSORS:
        model, parsed = _load_safetensors(path, factory, map_location)
        fmt = "safetensors"
    else:
        model, fmt = _load_torch_save(path, factory, trust_pickle, map_location)
    embedded, unknown = parsed
    ignored = check_set_aside(unknown, metadata, source=f"{path} ({METADATA_MEMBER})")
    effective = embedded.merged(metadata) if metadata is not None else embedded
    wrapper = SegmentationWrapper(model, effective, name=path.name)
    return LoadedModel(
        module=wrapper,
        path=path,
        sha256=digest,
        format=fmt,
        metadata=effective,
        embedded_metadata=embedded,
        ignored_embedded=ignored,
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; expected {formats.EXPECTED_FORMATS}")
    if path.is_dir():
        raise ModelError(
            f"model path {path} is a directory; expected a single file: {formats.EXPECTED_FORMATS}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_embedded(raw: str | bytes, path: Path) -> _Embedded:
    """Parse an embedded ``audit.json``; an absent (empty) member means no metadata."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if not text.strip():
        return ModelMetadata(), {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"embedded {METADATA_MEMBER} is not valid JSON: {exc}", source=str(path)
        ) from exc
    return ModelMetadata.split_mapping(data, source=f"{path} ({METADATA_MEMBER})")


def _refuse_training_capture(path: Path, how: str, ops: list[str]) -> None:
    if not ops:
        return
    shown = ", ".join(sorted(set(ops))[:4])
    raise ModelError(
        f"model file {path} was {how} while the model was in training mode ({shown}): "
        "running it would update BatchNorm statistics and apply random dropout, and "
        "calling eval() cannot undo that; call model.eval() before capturing it again"
    )


def _load_torchscript(
    path: Path, trust_pickle: bool, map_location: str | torch.device
) -> tuple[nn.Module, _Embedded]:
    if not trust_pickle:
        _refuse_foreign_torchscript_globals(path)
    extra: dict[str, Any] = {METADATA_MEMBER: ""}
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream, but that is advice for whoever saved the
            # file, not for the person auditing it.
            warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
            model = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:  # torch raises bare RuntimeErrors for every kind of damage
        raise ModelError(f"cannot load TorchScript model {path}: {exc}") from exc
    embedded = _parse_embedded(extra[METADATA_MEMBER], path)
    _refuse_training_capture(path, "traced", torchscript_training_ops(model))
    return model, embedded


def _load_export(
    path: Path, trust_pickle: bool, map_location: str | torch.device
) -> tuple[nn.Module, _Embedded]:
    extra: dict[str, Any] = {METADATA_MEMBER: ""}
    # torch.export.load unpickles and evaluates parts of the archive; it only ever sees a
    # copy holding the parts it reads as JSON, text or raw tensor bytes (see export_archive).
    with export_archive.sanitised_archive(path, trust_pickle=trust_pickle) as archive:
        try:
            program = torch.export.load(archive, extra_files=extra)
        except Exception as exc:
            raise ModelError(f"cannot load torch.export program {path}: {exc}") from exc
    if not trust_pickle:
        export_archive.check_program_callables(program, path)
    embedded = _parse_embedded(extra[METADATA_MEMBER], path)
    _refuse_training_capture(path, "exported", export_training_ops(program))
    # Guard functions are generated Python code; without sample inputs torch 2.14 makes
    # none, and check_guards=False keeps it so. Input shapes are still checked against the
    # exported ranges.
    model = program.module(check_guards=False)
    if torch.device(map_location) != torch.device("cpu"):
        model = model.to(map_location)
    return model, embedded


def _load_safetensors(
    path: Path, factory: str | None, map_location: str | torch.device
) -> tuple[nn.Module, _Embedded]:
    factory = _require_factory(factory, path, "a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path), device=str(torch.device(map_location)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read safetensors file {path}: {exc}") from exc
    # safetensors headers carry string metadata; audit.json may ride along there.
    embedded = _parse_embedded(header.get(METADATA_MEMBER, ""), path)
    return _build_and_load(factory, state, path, map_location), embedded


def _load_torch_save(
    path: Path, factory: str | None, trust_pickle: bool, map_location: str | torch.device
) -> tuple[nn.Module, str]:
    try:
        # The restricted unpickler only rebuilds tensors and plain containers; it raises
        # before calling anything else, so a hostile file cannot run code here.
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise ModelError(_pickle_refusal(path, exc)) from exc
        obj = _load_trusted_pickle(path, map_location)
    except Exception as exc:
        raise ModelError(
            f"cannot read {path} as a torch.save file (truncated or corrupt?): {exc}; "
            f"expected {formats.EXPECTED_FORMATS}"
        ) from exc
    if isinstance(obj, nn.Module):
        return obj, "pickle"
    state = _extract_state_dict(obj, path)
    factory = _require_factory(factory, path, "a state dict")
    return _build_and_load(factory, state, path, map_location), "state_dict"


def _refuse_foreign_torchscript_globals(path: Path) -> None:
    # torch's C++ unpickler refuses these too, but its error names neither member nor file.
    try:
        foreign = pickle_scan.torchscript_foreign_globals(path)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ModelError(f"cannot load TorchScript model {path}: {exc}") from exc
    if foreign:
        shown = "; ".join(f"{member} refers to {name}" for member, name in foreign[:4])
        raise ModelError(
            f"model file {path} is a TorchScript archive with pickled members that refer to "
            f"Python objects a TorchScript file never holds ({shown}); it was crafted or "
            "damaged, so SegAudit refuses it. Save the model again with torch.jit.save or "
            "torch.export.save"
        )


def _pickle_refusal(path: Path, exc: Exception) -> str:
    # torch's first lines are advice to load the file anyway; the global it refused (or the
    # opcode it does not support) comes after "WeightsUnpickler error:".
    text = str(exc)
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail if marker else text).splitlines() if line.strip()]
    reason = lines[0].split(" Please use ")[0] if lines else type(exc).__name__
    return (
        f"model file {path} is a pickled Python object (e.g. torch.save(model)), not just "
        "tensors; loading it would execute arbitrary code from the file, so SegAudit "
        "refuses it. If you trust the file, pass --audit-trust-pickle (or set "
        "trust_pickle = true under [tool.segaudit]); better, re-export the model with "
        "torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2') or "
        "torch.jit.save(torch.jit.trace(model.eval(), example), 'model.pt'). "
        f"(torch: {reason})"
    )


def _load_trusted_pickle(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        # Usually the class the pickle refers to is not importable here.
        raise ModelError(f"cannot unpickle trusted model file {path}: {exc}") from exc


def _extract_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping):
        # Training checkpoints nest the weights next to optimizer state and epochs.
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return _extract_state_dict(inner, path)
        keys = ", ".join(sorted(map(str, obj))[:_SHOWN_KEYS])
        raise ModelError(
            f"model file {path} holds a dict that is not a state dict (keys: {keys}); "
            "expected parameter names mapped to tensors, or a checkpoint with a "
            "'state_dict' or 'model' entry"
        )
    raise ModelError(
        f"model file {path} holds a {type(obj).__name__}, not a model or a state dict; "
        f"expected {formats.EXPECTED_FORMATS}"
    )


def _require_factory(factory: str | None, path: Path, what: str) -> str:
    if factory:
        return factory
    raise ModelError(
        f"model file {path} is {what}: it holds weights but not the architecture, so "
        "SegAudit needs a function that builds the model; pass "
        '--audit-factory package.module:function (or factory = "package.module:function" '
        "under [tool.segaudit]), where function() returns the untrained nn.Module"
    )


def _resolve_factory(factory: str, path: Path) -> nn.Module:
    module_name, sep, attr_path = factory.partition(":")
    parts_ok = all(p.isidentifier() for p in module_name.split(".")) and all(
        p.isidentifier() for p in attr_path.split(".")
    )
    if not sep or not parts_ok:
        raise ModelError(
            f"invalid model factory {factory!r} for {path}: expected 'package.module:function'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"cannot import module {module_name!r} of model factory {factory!r} (needed to "
            f"load {path}): {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ModelError(
                f"model factory {factory!r} (needed to load {path}): "
                f"{module_name!r} has no attribute {attr_path!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"model factory {factory!r} for {path} is not callable")
    try:
        model = target()
    except Exception as exc:
        raise ModelError(
            f"model factory {factory!r} failed while building the model for {path}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {factory!r} returned {type(model).__name__}, "
            f"not a torch.nn.Module (needed to load {path})"
        )
    return model


def _build_and_load(
    factory: str,
    state: Mapping[str, torch.Tensor],
    path: Path,
    map_location: str | torch.device,
) -> nn.Module:
    model = _resolve_factory(factory, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key} (file {list(state[key].shape)}, model {list(own[key].shape)})"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listed(mismatched)}")
    if unexpected and all(k.startswith("module.") for k in unexpected):
        problems.append("the file was saved from DataParallel: strip the 'module.' prefix")
    if problems:
        raise ModelError(
            f"weights in {path} do not fit the model built by factory {factory!r}: "
            + "; ".join(problems)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelError(
            f"weights in {path} do not fit the model built by factory {factory!r}: {detail}"
        ) from exc
    return model.to(map_location)


def _listed(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more

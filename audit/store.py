"""Evaluations kept on disk across runs (``--audit-cache DIR``), by their cache key.

An entry is one ``torch.save`` file read back with ``weights_only=True``: plain containers,
strings, numbers and tensors, never pickled objects.  A result dataclass becomes a JSON tree
(its class named, its fields encoded) plus a dictionary of tensors; numpy arrays travel as
tensors; only classes registered with :func:`register` are rebuilt, so a file can name no
other type.  Whatever holds something else (a failure, a search that replays Hypothesis'
example database, which lies outside the key) is simply not stored.

The key is the engine's key parts plus :attr:`EvaluationStore.identity` (SegAudit and
library versions, device, batch size, model metadata, ...); the entry repeats the parts in
full and a load compares them, so a file is trusted only for exactly what it was computed
from.  A missing entry is a miss; a corrupt, truncated or foreign one is a miss with a
warning (and is overwritten by the recomputed result), never a crash.

What is stored: the whole result, the example images the report draws included (at
Cityscapes resolution a few MB per evaluation; label maps are narrowed to the smallest
integer type that holds them, losslessly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: the entry layout; a change makes older entries misses (their key differs)
FORMAT = 1
#: tensors smaller than this are kept in their dtype (narrowing them saves nothing)
_NARROW_MIN = 4096
_REGISTRY: dict[str, type] = {}


class Unstorable(TypeError):
    """A value the store's codec does not encode (not an error: it is not stored)."""


class BadEntry(ValueError):
    """An entry that does not decode to what its key promises."""


def register(*classes: type) -> None:
    """Allow the result dataclasses ``classes`` in stored entries (the codec's whitelist)."""
    for cls in classes:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        _REGISTRY[_name(cls)] = cls


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def classes_fingerprint() -> str:
    """A digest of the registered classes and their fields."""
    shape = sorted((n, [f.name for f in dataclasses.fields(c)]) for n, c in _REGISTRY.items())
    return hashlib.sha256(repr(shape).encode()).hexdigest()[:16]


def storage_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(parts).encode()).hexdigest()


def canonical(parts: Mapping[str, Any]) -> str:
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)


# -- the codec ----------------------------------------------------------------------------
class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, value: torch.Tensor, tag: str) -> dict[str, Any]:
        name = str(len(self.tensors))
        t = value.detach().to("cpu")
        dtype = t.dtype
        if dtype == torch.int64 and t.numel() >= _NARROW_MIN:
            lo, hi = int(t.min()), int(t.max())
            for narrow in (torch.uint8, torch.int16, torch.int32):
                info = torch.iinfo(narrow)
                if info.min <= lo and hi <= info.max:
                    t = t.to(narrow)
                    break
        # clone: a view would save its whole storage
        self.tensors[name] = t.clone() if t.dtype == dtype else t
        return {tag: name, "dtype": str(dtype).removeprefix("torch.")}

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, torch.Tensor):
            return self.tensor(value, "$tensor")
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise Unstorable(f"numpy array of dtype {value.dtype}")
            return self.tensor(torch.from_numpy(np.ascontiguousarray(value)), "$ndarray")
        if isinstance(value, np.generic):
            if value.dtype.kind not in "biuf":
                raise Unstorable(f"numpy scalar of dtype {value.dtype}")
            return {"$npscalar": self.encode(value.item()), "dtype": value.dtype.name}
        if isinstance(value, list | tuple):
            return {
                "$list" if isinstance(value, list) else "$tuple": [self.encode(v) for v in value]
            }
        if isinstance(value, dict):
            return {"$dict": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = _name(type(value))
            if _REGISTRY.get(name) is not type(value):
                raise Unstorable(f"{name} is not a registered result class")
            fields = {
                f.name: self.encode(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
            return {"$dataclass": name, "fields": fields}
        raise Unstorable(f"values of type {type(value).__name__}")


def encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``value`` as (a JSON tree, its tensors); :class:`Unstorable` for what it cannot hold."""
    encoder = _Encoder()
    return encoder.encode(value), encoder.tensors


def decode(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The value :func:`encode` encoded; :class:`BadEntry` for anything else."""
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if not isinstance(tree, dict) or not tree:
        raise BadEntry(f"unexpected node {type(tree).__name__}")
    tag = next(iter(tree))
    if tag == "$float":
        return float(tree[tag])
    if tag in ("$tensor", "$ndarray"):
        t = tensors.get(tree[tag])
        dtype = getattr(torch, str(tree.get("dtype")), None)
        if not isinstance(t, torch.Tensor) or not isinstance(dtype, torch.dtype):
            raise BadEntry(f"missing tensor {tree[tag]!r}")
        t = t.to(dtype)
        return t.numpy() if tag == "$ndarray" else t
    if tag == "$npscalar":
        dtype = np.dtype(str(tree["dtype"]))
        if dtype.kind not in "biuf":
            raise BadEntry(f"numpy scalar of dtype {dtype}")
        return dtype.type(decode(tree[tag], tensors))
    if tag == "$list":
        return [decode(v, tensors) for v in tree[tag]]
    if tag == "$tuple":
        return tuple(decode(v, tensors) for v in tree[tag])
    if tag == "$dict":
        return {decode(k, tensors): decode(v, tensors) for k, v in tree[tag]}
    if tag == "$dataclass":
        cls = _REGISTRY.get(str(tree[tag]))
        if cls is None:
            raise BadEntry(f"class {tree[tag]!r} is not a registered result class")
        stored = tree["fields"]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if set(stored) != set(fields):
            raise BadEntry(f"{tree[tag]} fields differ from this version's")
        values = {name: decode(v, tensors) for name, v in stored.items()}
        obj = cls(**{n: v for n, v in values.items() if fields[n].init})
        for name, value in values.items():
            if not fields[name].init:
                object.__setattr__(obj, name, value)
        return obj
    raise BadEntry(f"unknown node {tag!r}")


# -- the store ----------------------------------------------------------------------------
class EvaluationStore:
    """A folder of evaluation results, one file per key."""

    def __init__(
        self,
        folder: Path,
        identity: Mapping[str, Any],
        *,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        #: what every result depends on beyond the engine's key parts; the result classes'
        #: fields too, so an entry written before a class changed is a plain miss
        self.identity = {"format": FORMAT, "classes": classes_fingerprint(), **identity}
        self.on_problem = on_problem
        #: warnings about entries that could not be used or written, in order
        self.problems: list[str] = []

    def full_parts(self, parts: Mapping[str, Any]) -> dict[str, Any]:
        return {"parts": dict(parts), "identity": self.identity}

    def key(self, parts: Mapping[str, Any]) -> str:
        return storage_key(self.full_parts(parts))

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        if self.on_problem is not None:
            self.on_problem(message)

    def load(self, parts: Mapping[str, Any]) -> tuple[bool, Any]:
        """``(True, value)`` for a usable entry of ``parts``, else ``(False, None)``."""
        key = self.key(parts)
        path = self.path(key)
        if not path.is_file():
            return False, None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, dict) or entry.get("format") != FORMAT:
                raise BadEntry("not an entry of this format")
            if entry.get("key") != key or entry.get("parts") != canonical(self.full_parts(parts)):
                raise BadEntry("its key does not match what it claims to hold")
            tensors = entry.get("tensors")
            if not isinstance(tensors, dict):
                raise BadEntry("no tensors")
            return True, decode(json.loads(entry["tree"]), tensors)
        except Exception as exc:  # a file on disk can be anything: never a crash
            self._problem(
                f"cache entry {path} is unusable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); recomputing it"
            )
            return False, None

    def save(self, parts: Mapping[str, Any], value: Any) -> bool:
        """Store ``value`` under ``parts``; False when it is not storable or not written."""
        try:
            tree, tensors = encode(value)
        except Unstorable:
            return False
        key = self.key(parts)
        path = self.path(key)
        entry = {
            "format": FORMAT,
            "key": key,
            "parts": canonical(self.full_parts(parts)),
            "tree": json.dumps(tree, allow_nan=False),
            "tensors": tensors,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(entry, fh)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._problem(f"cache entry {path} not written ({exc.strerror or exc})")
            return False
        return True

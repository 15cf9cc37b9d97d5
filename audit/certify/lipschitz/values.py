"""What the bound-propagation interpreter knows and records.

A value is a Lipschitz bound with respect to the input, or ``None`` for a constant
(:class:`_V`); an input-dependent argument carries its shape at the probe (:class:`_Dep`,
:class:`_Shape`); one operation with its arguments resolved is a :class:`_Call`; the
context (:class:`_Ctx`) collects a :class:`LayerBound` per layer and notes which parts of
the bound hold at the probe's size only.  :class:`UnsupportedLayer` is the error every
front end raises when a layer or operation cannot be bounded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from audit.certify.lipschitz.norms import _f64, _Refuse
from audit.errors import ModelError

__all__ = ["DOCS", "LayerBound", "UnsupportedLayer"]

#: where the supported operations are listed (kept out of error messages: they ran to 1,500
#: characters, burying the layer at fault)
DOCS = "docs/lipschitz.md"
_ADVICE = (
    "replace it with a layer listed in {docs}, or state the model's constant as a claim "
    "(metadata 'lipschitz'), which SegAudit then tests but cannot prove"
)


@dataclass(frozen=True)
class LayerBound:
    """The Lipschitz bound of one layer or operation, and how it was obtained."""

    name: str
    kind: str
    bound: float
    method: str


class UnsupportedLayer(ModelError):
    """A layer whose Lipschitz constant SegAudit cannot bound from its weights.

    ``layer`` is the qualified name (``""`` for the root), ``kind`` its type or operation.
    """

    def __init__(self, layer: str, kind: str, reason: str) -> None:
        self.layer = layer
        self.kind = kind
        self.reason = reason
        shown = layer or "<root>"
        super().__init__(
            f"no provable Lipschitz bound for layer {shown!r} ({kind}): {reason}; "
            + _ADVICE.format(docs=DOCS)
        )


@dataclass
class _V:
    """What is known of one value: its Lipschitz bound w.r.t. the input, None if constant."""

    lip: float | None
    parts: tuple[_V, ...] | None = None
    #: (split id, piece index, pieces, dim, source's bound) for pieces of chunk/split
    piece: tuple[int, int, int, int, float] | None = None
    #: ("maximum"|"minimum", piece a, piece b) for the MaxMin pattern
    pair: tuple[str, tuple, tuple] | None = None
    #: ("max"|"min", source token, dim) for a max or min over one dim (GroupSort's pattern)
    group: tuple[str, int, int] | None = None
    #: why this value may not be used (the indices of a max or sort: not Lipschitz)
    refusal: str | None = None
    #: (pads as F.pad lists them, shape and bound before padding, the pad's layer entry) of
    #: a circularly padded value, so a convolution reading it is bounded as one circular
    #: convolution
    circular: tuple[tuple[int, ...], tuple[int, ...], float, LayerBound] | None = None
    #: a token naming this value, for patterns that need "the same source"
    token: int = field(default_factory=lambda: next(_TOKENS))

    @property
    def dep(self) -> bool:
        return self.lip is not None


_SPLIT_IDS = itertools.count()
_TOKENS = itertools.count()
_CONST = _V(None)


@dataclass
class _Dep:
    """An input-dependent argument: its bound and its shape at the probe."""

    v: _V
    shape: tuple[int, ...] | None


@dataclass
class _Ctx:
    sized: bool
    layers: list[LayerBound] = field(default_factory=list)
    size_specific: list[str] = field(default_factory=list)

    def add(self, name: str, kind: str, bound: float, how: str) -> None:
        self.layers.append(LayerBound(name, kind, float(bound), how))


@dataclass
class _Call:
    """One operation with its arguments resolved: constants as values, inputs as _Dep."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    source: str  # "torch" (functions, methods, modules) or "aten"
    out_shape: Any
    where: str
    kind: str

    def get(self, index: int, key: str, default: Any = None) -> Any:
        if key in self.kwargs:
            return self.kwargs[key]
        if index < len(self.args):
            return self.args[index]
        return default

    def const(self, index: int, key: str, default: Any = None) -> Any:
        value = self.get(index, key, default)
        if _contains_dep(value):
            raise _Refuse(f"argument {key!r} depends on the input")
        return value

    def tensor(self, index: int = 0, key: str = "input") -> _Dep:
        value = self.get(index, key)
        if not isinstance(value, _Dep):
            raise _Refuse(f"argument {key!r} is not an input-dependent tensor")
        return value


def _contains_dep(value: Any) -> bool:
    if isinstance(value, _Dep):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_dep(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_dep(v) for v in value.values())
    return False


def _deps(value: Any) -> list[_Dep]:
    if isinstance(value, _Dep):
        return [value]
    if isinstance(value, (list, tuple)):
        return [d for v in value for d in _deps(v)]
    if isinstance(value, dict):
        return [d for v in value.values() for d in _deps(v)]
    return []


def _hw(shape: Any) -> tuple[int, int] | None:
    if isinstance(shape, tuple) and len(shape) >= 2:
        return (int(shape[-2]), int(shape[-1]))
    return None


def _numel(shape: Any) -> int:
    return math.prod(int(s) for s in shape) if shape is not None else 0


def _broadcast_factor(dep: _Dep, out_shape: Any) -> float:
    """sqrt of how often broadcasting repeats each entry of ``dep`` in the output."""
    if dep.shape is None or out_shape is None or tuple(dep.shape) == tuple(out_shape):
        return 1.0
    return math.sqrt(max(1, _numel(out_shape) // max(1, _numel(dep.shape))))


def _scale_of(value: Any, *, inverse: bool) -> float:
    """max |c| (or 1 / min |c|) of a constant scalar or tensor."""
    if isinstance(value, bool) or value is None:
        raise _Refuse(f"cannot scale by {value!r}")
    if isinstance(value, (int, float)):
        mags = torch.tensor([abs(float(value))], dtype=torch.float64)
    elif isinstance(value, torch.Tensor):
        mags = _f64(value).abs().flatten()
    else:
        raise _Refuse(f"cannot scale by {type(value).__name__}")
    if mags.numel() == 0:
        return 0.0
    if inverse:
        low = float(mags.min())
        if low == 0:
            raise _Refuse("division by a constant that contains 0")
        return 1.0 / low
    return float(mags.max())


class _Shape(tuple):
    """A tensor shape recorded at the probe, with its dtype."""

    dtype: torch.dtype

    def __new__(cls, shape: Sequence[int], dtype: torch.dtype) -> _Shape:
        obj = super().__new__(cls, (int(s) for s in shape))
        obj.dtype = dtype
        return obj


def _is_tensor_shape(value: Any) -> bool:
    return isinstance(value, _Shape)


def _only_dep(call: _Call) -> _Dep:
    deps = _deps((call.args, call.kwargs))
    if len(deps) != 1:
        raise _Refuse("several input-dependent operands where one was expected")
    return deps[0]


def _operands(call: _Call) -> tuple[Any, Any]:
    """The two operands of a binary op; every input-dependent argument must be one of them."""
    a, b = call.get(0, "input"), call.get(1, "other")
    found = sum(isinstance(x, _Dep) for x in (a, b))
    if found != len(_deps((call.args, call.kwargs))):
        raise _Refuse("unexpected arguments")
    return a, b

"""The TorchScript front end: bounds of scripted or traced models, read as graphs.

The model's inlined graph (every submodule call replaced by its body) holds ATen operations
and a few ``prim`` operations that build and take apart lists, tuples and dicts.  This
front end interprets it once on the probe input, node by node: each ATen operation is run
(through ``torch.ops``, at the overload the graph names) for the shapes and constants it
produces, and every operation that reads the input is bounded by the same rules as a
``torch.export`` graph (:func:`audit.certify.lipschitz.propagate._bound_call`).  So wrappers
that return dicts, scale, add or concatenate are bounded like any other graph, and a layer
is named by its place in the module hierarchy (``blk.conv``, ``Conv2d``).

A branch (``prim::If``) on a constant is followed; a branch or loop whose condition reads
the input's values is refused, as are operations the interpreter does not know.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from audit.certify.lipschitz.norms import _Refuse
from audit.certify.lipschitz.propagate import _SHAPE_QUERIES, _bound_call, _is_inplace
from audit.certify.lipschitz.values import (
    _V,
    UnsupportedLayer,
    _Call,
    _contains_dep,
    _Ctx,
    _Dep,
    _deps,
    _Shape,
)

#: results that depend on the input's shape (or device, dtype) only
_SHAPE_ONLY = _SHAPE_QUERIES | {
    "zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones",
    "new_full", "new_empty", "len", "device", "dtype", "layout", "is_cuda", "requires_grad",
}  # fmt: skip
#: operations without effect on values
_IGNORED = {"aten::warn", "prim::RaiseException", "aten::format", "prim::Print"}


def _ts_graph_bound(
    module: torch.jit.ScriptModule, x: torch.Tensor, ctx: _Ctx
) -> list[tuple[float, tuple[int, ...]]]:
    """Propagate bounds through ``module``'s inlined graph on ``x``; returns (bound, shape)
    of each output tensor."""
    graph = module.inlined_graph
    inputs = list(graph.inputs())
    root_kind = getattr(module, "original_name", type(module).__name__)
    if len(inputs) != 2:
        raise UnsupportedLayer(
            "",
            root_kind,
            f"its forward takes {len(inputs) - 1} arguments; one image batch expected",
        )
    interpreter = _Interpreter(module, root_kind, ctx)
    interpreter.bind(inputs[0], module, module)
    interpreter.bind(inputs[1], x, _Dep(_V(1.0), _Shape(x.shape, x.dtype)))
    with torch.no_grad():
        interpreter.run_block(graph)
    outputs = []
    for value in graph.outputs():
        for dep in _deps(interpreter.resolved[value]):
            if dep.v.refusal:
                raise UnsupportedLayer("", root_kind, f"its output: {dep.v.refusal}")
            outputs.append((dep.v.lip, tuple(dep.shape or ())))
    return outputs


class _Interpreter:
    """Runs a TorchScript graph, keeping per value its result (``runtime``) and what the
    bound knows of it (``resolved``: a constant's value, or a :class:`_Dep`)."""

    def __init__(self, module: Any, root_kind: str, ctx: _Ctx) -> None:
        self.module = module
        self.root_kind = root_kind
        self.ctx = ctx
        self.runtime: dict[Any, Any] = {}
        self.resolved: dict[Any, Any] = {}

    def bind(self, value: Any, runtime: Any, resolved: Any) -> None:
        self.runtime[value] = runtime
        self.resolved[value] = resolved

    def run_block(self, block: Any) -> None:
        for node in block.nodes():
            kind = node.kind()
            if kind in _IGNORED:
                if kind == "prim::RaiseException":
                    where, owner = _owner(node, self.root_kind)
                    raise UnsupportedLayer(where, owner, "it raises an exception on the probe")
                continue
            try:
                self.run_node(node, kind)
            except _Refuse as exc:
                where, owner = _owner(node, self.root_kind)
                raise UnsupportedLayer(where, owner, f"operation {kind}: {exc}") from None

    def run_node(self, node: Any, kind: str) -> None:
        ins = list(node.inputs())
        outs = list(node.outputs())
        if kind == "prim::Constant":
            value = outs[0].toIValue()
            self.bind(outs[0], value, value)
        elif kind == "prim::Uninitialized":  # a placeholder in branches that raise
            self.bind(outs[0], None, None)
        elif kind == "prim::GetAttr":
            value = getattr(self.runtime[ins[0]], node.s("name"))
            self.bind(outs[0], value, value)
        elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            box = list if kind == "prim::ListConstruct" else tuple
            self.bind(
                outs[0],
                box(self.runtime[v] for v in ins),
                box(self.resolved[v] for v in ins),
            )
        elif kind == "prim::DictConstruct":
            keys, items = ins[0::2], ins[1::2]
            self.bind(
                outs[0],
                {self.runtime[k]: self.runtime[v] for k, v in zip(keys, items, strict=True)},
                {self.runtime[k]: self.resolved[v] for k, v in zip(keys, items, strict=True)},
            )
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            for i, out in enumerate(outs):
                self.bind(out, self.runtime[ins[0]][i], self._item(ins[0], i))
        elif kind in ("prim::TupleIndex", "aten::__getitem__"):
            key = self.runtime[ins[1]]
            if _contains_dep(self.resolved[ins[1]]):
                raise _Refuse("indexing with input-dependent indices")
            self.bind(outs[0], self.runtime[ins[0]][key], self._item(ins[0], key))
        elif kind in ("prim::unchecked_cast", "aten::detach", "prim::data"):
            self.bind(outs[0], self.runtime[ins[0]], self.resolved[ins[0]])
        elif kind in ("aten::__is__", "aten::__isnot__"):
            same = self.runtime[ins[0]] is self.runtime[ins[1]]
            value = same if kind == "aten::__is__" else not same
            self.bind(outs[0], value, value)
        elif kind == "prim::If":
            self._branch(node, ins, outs)
        elif kind == "prim::Loop":
            raise _Refuse("loops are not read (unroll the model, or save it with torch.export)")
        elif kind.startswith(("aten::", "prim::")):
            self._operation(node, kind, ins, outs)
        else:
            raise _Refuse("an operation of another library (no known Lipschitz bound)")

    def _item(self, container: Any, key: Any) -> Any:
        resolved = self.resolved[container]
        if isinstance(resolved, _Dep):
            if resolved.v.parts is None:
                raise _Refuse("unexpected use of a split")
            item = self.runtime[container][key]
            shape = _Shape(item.shape, item.dtype) if isinstance(item, torch.Tensor) else None
            return _Dep(resolved.v.parts[key], shape)
        return resolved[key]

    def _branch(self, node: Any, ins: list[Any], outs: list[Any]) -> None:
        if _contains_dep(self.resolved[ins[0]]):
            raise _Refuse("it branches on the input's values")
        blocks = list(node.blocks())
        taken = blocks[0] if self.runtime[ins[0]] else blocks[1]
        self.run_block(taken)
        for out, value in zip(outs, taken.outputs(), strict=True):
            self.bind(out, self.runtime[value], self.resolved[value])

    def _operation(self, node: Any, kind: str, ins: list[Any], outs: list[Any]) -> None:
        schema = node.schema()
        if schema == "(no schema)":
            raise _Refuse("no schema (an operation this interpreter does not know)")
        parsed = torch._C.parse_schema(schema)
        args, kwargs = [], {}
        resolved_args, resolved_kwargs = [], {}
        for argument, value in zip(parsed.arguments, ins, strict=True):
            if argument.kwarg_only:
                kwargs[argument.name] = self.runtime[value]
                resolved_kwargs[argument.name] = self.resolved[value]
            else:
                args.append(self.runtime[value])
                resolved_args.append(self.resolved[value])
        namespace, name = parsed.name.split("::", 1)
        dependent = _contains_dep((resolved_args, resolved_kwargs))
        if dependent and _is_inplace(name):
            self._check_inplace(ins[0])
        overload = parsed.overload_name or "default"
        generic = _GENERIC_LIST_OPS.get((parsed.name, overload))
        if generic is not None:
            result = generic(*args)
        else:
            op = getattr(getattr(getattr(torch.ops, namespace), name), overload)
            result = op(*args, **kwargs)
        results = list(result) if len(outs) > 1 else [result]
        if not dependent or name.rstrip("_") in _SHAPE_ONLY:
            for out, value in zip(outs, results, strict=True):
                self.bind(out, value, value)
            return
        base = name[:-1] if _is_inplace(name) else name
        where, owner = _owner(node, self.root_kind)
        shape = _summarise(result)
        call = _Call(base, tuple(resolved_args), resolved_kwargs, "aten", shape, where, owner)
        v = _bound_call(call, self.ctx)
        if len(outs) > 1:
            parts = v.parts or tuple(v for _ in outs)
            for out, value, part in zip(outs, results, parts, strict=True):
                self.bind(out, value, _as_resolved(part, value))
        else:
            self.bind(outs[0], result, _as_resolved(v, result))

    def _check_inplace(self, target: Any) -> None:
        """An in-place op changes its input for every other user: only safe if there are
        none, along the chain of views the target was taken from, and if the target reads
        the input already (writing the input into a constant would hide it from the bound)."""
        if not _contains_dep(self.resolved[target]):
            raise _Refuse("it writes an input-dependent value into a constant tensor")
        current = target
        while current is not None:
            if len(current.uses()) > 1:
                raise _Refuse("in-place operation on a tensor that is used elsewhere")
            node = current.node()
            if not node.kind().startswith("aten::") or not _is_view(node):
                break
            current = next(iter(node.inputs()), None)


def _is_view(node: Any) -> bool:
    """Whether the node's output aliases its first input (``Tensor(a) self -> Tensor(a)``)."""
    schema = torch._C.parse_schema(node.schema())
    if not schema.arguments or not schema.returns:
        return False
    first, result = schema.arguments[0].alias_info, schema.returns[0].alias_info
    return first is not None and result is not None and not result.is_write


#: list operations on TorchScript's generic ``t[]``, which torch.ops cannot take from Python
_GENERIC_LIST_OPS: dict[tuple[str, str], Any] = {
    ("aten::slice", "t"): lambda items, start, end, step: items[start:end:step],
    ("aten::len", "t"): len,
    ("aten::add", "t"): lambda a, b: [*a, *b],
    ("aten::list", "t"): list,
    ("aten::__getitem__", "t"): lambda items, i: items[i],
}


def _as_resolved(v: _V, runtime: Any) -> Any:
    if not v.dep and not v.refusal:
        return runtime
    return _Dep(
        v, _Shape(runtime.shape, runtime.dtype) if isinstance(runtime, torch.Tensor) else None
    )


def _summarise(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _Shape(value.shape, value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_summarise(v) for v in value)
    return value


_HIERARCHY_PART = re.compile(r"^(?P<name>[^()]*)\((?P<kind>[^()]*)\)$")


def _owner(node: Any, root_kind: str) -> tuple[str, str]:
    """(qualified name, type name) of the submodule a node was inlined from."""
    try:
        hierarchy = node.getModuleHierarchy()
    except RuntimeError:
        hierarchy = ""
    names, kind = [], root_kind
    for part in hierarchy.split(".") if hierarchy else []:
        match = _HIERARCHY_PART.match(part)
        if match is None:
            return hierarchy, root_kind
        if match["name"] != "SELF":  # a method calling another on the same module
            names.append(match["name"])
        kind = match["kind"]
    return ".".join(names), kind

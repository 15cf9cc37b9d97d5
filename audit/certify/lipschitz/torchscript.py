"""The TorchScript front end: bounds of scripted or traced models read as chains of
submodules.

TorchScript models are read as chains of submodules, each leaf's graph holding one
supported operation (or MaxMin's pattern), which the interpreter's rule for that operation
bounds.  A graph that also sums or concatenates branches is refused: a traced graph hides
them from a layer-by-layer reading.
"""

from __future__ import annotations

from typing import Any

import torch

from audit.certify.lipschitz.norms import _pair, _Refuse
from audit.certify.lipschitz.propagate import _HANDLERS, _SPLITS, _is_inplace
from audit.certify.lipschitz.values import _V, UnsupportedLayer, _Call, _Ctx, _Dep, _Shape

_TS_IGNORED = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::ListUnpack"}


def _ts_bound(
    module: torch.jit.ScriptModule, name: str, x: torch.Tensor, ctx: _Ctx
) -> tuple[float, torch.Tensor]:
    """Bound of a TorchScript module applied to ``x``; returns (bound, output)."""
    kind = getattr(module, "original_name", type(module).__name__)
    graph = module.graph
    nodes = [n for n in graph.nodes() if n.kind() not in _TS_IGNORED]
    if any(n.kind() == "prim::CallMethod" for n in nodes):
        order = _ts_chain(module, graph, nodes)
        if order is None:
            others = sorted({n.kind() for n in nodes if n.kind() != "prim::CallMethod"})
            raise UnsupportedLayer(
                name,
                kind,
                "this TorchScript module is not a plain chain of submodules"
                + (f" (it also computes {', '.join(others)})" if others else "")
                + "; a traced graph hides residual sums and concatenations from a layer-by-"
                "layer reading, so SegAudit bounds TorchScript models only when every "
                "container is sequential. Save the model with torch.export (whose graph "
                "SegAudit reads), pass the eager nn.Module, or state the constant as a claim",
            )
        total = 1.0
        for child_name in order:
            child = getattr(module, child_name)
            qual = f"{name}.{child_name}" if name else child_name
            bound, x = _ts_bound(child, qual, x, ctx)
            total *= bound
        return total, x
    with torch.no_grad():
        y = module(x)
    if not isinstance(y, torch.Tensor):
        raise UnsupportedLayer(name, kind, "it does not return one tensor")
    try:
        bound, how = _ts_leaf(module, nodes, x, y, ctx, name, kind)
    except _Refuse as exc:
        raise UnsupportedLayer(name, kind, str(exc)) from None
    ctx.add(name, kind, bound, how)
    return bound, y


def _ts_chain(module: Any, graph: Any, nodes: list[Any]) -> list[str] | None:
    """Child names in call order if the graph is exactly x -> child_1 -> ... -> output."""
    inputs = list(graph.inputs())
    if len(inputs) != 2:
        return None
    current = inputs[1]
    order: list[str] = []
    for node in nodes:
        if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
            return None
        ins = list(node.inputs())
        owner = ins[0].node()
        if len(ins) != 2 or ins[1] is not current or owner.kind() != "prim::GetAttr":
            return None
        if next(owner.inputs()) is not inputs[0]:
            return None
        order.append(owner.s("name"))
        current = node.output()
    outputs = list(graph.outputs())
    if len(outputs) != 1 or outputs[0] is not current:
        return None
    return order


def _ts_const(value: Any, module: Any, graph_input: Any) -> Any:
    node = value.node()
    kind = node.kind()
    if value is graph_input:
        return _INPUT
    if kind == "prim::Constant":
        return value.toIValue()
    if kind == "prim::ListConstruct":
        return [_ts_const(v, module, graph_input) for v in node.inputs()]
    if kind == "prim::GetAttr":
        owner = next(node.inputs())
        if owner.node().kind() == "prim::Param":
            return getattr(module, node.s("name"))
        return getattr(_ts_const(owner, module, graph_input), node.s("name"))
    raise _Refuse(f"argument computed by {kind}")


_INPUT = object()


def _reads_input(value: Any) -> bool:
    if value is _INPUT:
        return True
    if isinstance(value, (list, tuple)):
        return any(_reads_input(v) for v in value)
    return False


def _ts_leaf(
    module: Any, nodes: list[Any], x: torch.Tensor, y: torch.Tensor, ctx: _Ctx, name: str, kind: str
) -> tuple[float, str]:
    graph = module.graph
    graph_input = list(graph.inputs())[1]
    graph_output = next(iter(graph.outputs()))
    kinds = [n.kind() for n in nodes]
    in_shape = _Shape(x.shape, x.dtype)
    out_shape = _Shape(y.shape, y.dtype)
    if not nodes:
        if graph_output is not graph_input:
            raise _Refuse("unexpected graph")
        return 1.0, "identity"
    if kinds == ["aten::chunk", "aten::maximum", "aten::minimum", "aten::cat"]:
        return _ts_maxmin(nodes, graph_input, graph_output, x)
    padding_mode = "zeros"
    if kinds == ["aten::pad", "aten::_convolution"]:
        pad, conv = nodes
        pads = _ts_const(list(pad.inputs())[1], module, graph_input)
        mode = _ts_const(list(pad.inputs())[2], module, graph_input)
        conv_in = next(iter(conv.inputs()))
        if next(pad.inputs()) is not graph_input or conv_in is not pad.output():
            raise _Refuse("unexpected graph")
        if mode != "circular" or len(pads) != 4 or pads[0] != pads[1] or pads[2] != pads[3]:
            raise _Refuse(f"padding mode {mode!r} {pads} before the convolution")
        padding_mode = "circular"
        circular = (pads[2], pads[0])
        nodes = [conv]
    if len(nodes) != 1:
        raise _Refuse(f"its graph computes {', '.join(kinds)}; one supported operation expected")
    node = nodes[0]
    if node.output() is not graph_output:
        raise _Refuse("unexpected graph")
    op = node.kind().split("::", 1)[-1]
    if _is_inplace(op):
        op = op[:-1]
    raw = list(node.inputs())
    args: list[Any] = [
        _INPUT if padding_mode == "circular" else _ts_const(raw[0], module, graph_input)
    ]
    args += [_ts_const(value, module, graph_input) for value in raw[1:]]
    if args[0] is not _INPUT or _reads_input(args[1:]):
        raise _Refuse("the operation must read the module's input once, as first argument")
    dep = _Dep(_V(1.0), in_shape)
    args[0] = dep
    kwargs: dict[str, Any] = {}
    if padding_mode == "circular":
        if op != "_convolution" or _pair(args[4]) != (0, 0):
            raise _Refuse("unexpected padded convolution")
        args[4] = list(circular)
        kwargs["__padding_mode__"] = "circular"
    call = _Call(op, tuple(args), kwargs, "aten", out_shape, name, kind)
    if op not in _HANDLERS:
        raise _Refuse(f"operation {node.kind()} has no known Lipschitz bound")
    if op in _SPLITS or op in ("getitem", "cat", "concat", "stack"):
        raise _Refuse(f"operation {node.kind()} as a layer")
    sub_ctx = _Ctx(sized=ctx.sized)
    value = _HANDLERS[op](call, sub_ctx)
    ctx.size_specific.extend(sub_ctx.size_specific)
    how = sub_ctx.layers[-1].method if sub_ctx.layers else "permutation or identity"
    if value.lip is None:
        raise _Refuse("unexpected graph")
    return value.lip, how


def _ts_maxmin(nodes: list[Any], graph_input: Any, graph_output: Any, x: torch.Tensor):
    chunk, maximum, minimum, cat = nodes
    chunk_ins = list(chunk.inputs())
    if chunk_ins[0] is not graph_input or chunk_ins[1].toIValue() != 2:
        raise _Refuse("unexpected MaxMin graph")
    dim = chunk_ins[2].toIValue()
    if x.dim() == 0 or x.shape[dim] % 2:
        raise _Refuse("MaxMin needs an even number of channels")
    unpack = next(iter(chunk.output().uses())).user
    if unpack.kind() != "prim::ListUnpack" or len(list(chunk.output().uses())) != 1:
        raise _Refuse("unexpected MaxMin graph")
    halves = list(unpack.outputs())
    for op in (maximum, minimum):
        if set(op.inputs()) != set(halves) or len(list(op.inputs())) != 2:
            raise _Refuse("unexpected MaxMin graph")
    cat_ins = list(cat.inputs())
    listed = cat_ins[0].node()
    if listed.kind() != "prim::ListConstruct" or cat_ins[1].toIValue() != dim:
        raise _Refuse("unexpected MaxMin graph")
    members = list(listed.inputs())
    if {m.node() for m in members} != {maximum, minimum} or len(members) != 2:
        raise _Refuse("unexpected MaxMin graph")
    if cat.output() is not graph_output:
        raise _Refuse("unexpected MaxMin graph")
    return 1.0, "max/min of two chunk halves (GroupSort 2): 1-Lipschitz"

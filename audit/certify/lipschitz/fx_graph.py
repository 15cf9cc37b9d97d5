"""The fx front end: bounds of eager modules (traced with ``torch.fx``) and of
``torch.export`` programs (their ATen graph).

Eager modules are traced with ``torch.fx``, supported layers kept as leaves (each expressed
as the equivalent functional call), and the graph is checked to reproduce the module on a
random input; programs from ``torch.export`` are read from their ATen graph.  One forward
pass on the probe input gives every node's shape, then each input-dependent node is
bounded by :func:`audit.certify.lipschitz.propagate._bound_call`.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from audit.certify.lipschitz.norms import MaxMin, _Refuse
from audit.certify.lipschitz.propagate import _SHAPE_QUERIES, _bound_call, _is_inplace
from audit.certify.lipschitz.values import (
    _CONST,
    _V,
    UnsupportedLayer,
    _Call,
    _contains_dep,
    _Ctx,
    _Dep,
    _deps,
    _is_tensor_shape,
    _Shape,
)

# --------------------------------------------------------------------------------------
# Operation names: ATen overloads, Python operators and torch functions
# --------------------------------------------------------------------------------------


def _aten_name(target: Any) -> str:
    return target.overloadpacket.__name__


# Python operators and torch functions under their own names.
_FUNCTION_NAMES: dict[Any, str] = {
    operator.add: "add",
    operator.sub: "sub",
    operator.mul: "mul",
    operator.truediv: "div",
    operator.neg: "neg",
    operator.pos: "positive",
    operator.getitem: "getitem",
    getattr: "getattr",
    F.interpolate: "interpolate",
    F.upsample: "interpolate",
    F.relu: "relu",
    F.relu6: "relu6",
    F.batch_norm: "batch_norm",
    F.dropout: "dropout",
    F.dropout2d: "dropout",
    F.max_pool2d: "max_pool2d",
    F.pad: "pad",
}


def _function_name(target: Any) -> str | None:
    if target in _FUNCTION_NAMES:
        return _FUNCTION_NAMES[target]
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None)
    if name and (module.startswith("torch") or module in ("_operator", "operator")):
        return name
    return None


# --------------------------------------------------------------------------------------
# Modules as leaves
# --------------------------------------------------------------------------------------

_LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    MaxMin,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Upsample,
)


def _leaf_type(module: nn.Module) -> type[nn.Module] | None:
    """The supported type ``module`` behaves as, or None (its forward is overridden)."""
    for base in _LEAF_TYPES:
        if isinstance(module, base):
            cls = type(module)
            # A subclass that overrides forward may compute anything: trace through it.
            # Parametrised layers (torch.nn.utils.parametrize) keep the base forward.
            methods = ("forward", "_conv_forward") if base is nn.Conv2d else ("forward",)
            if all(getattr(cls, m, None) is getattr(base, m, None) for m in methods):
                return base
            return None
    return None


def _module_call(module: nn.Module, dep: _Dep, out_shape: Any, where: str, kind: str) -> _Call:
    """Express a supported module as the equivalent functional call."""
    base = _leaf_type(module)
    m: Any = module

    def call(name: str, *args: Any, **kwargs: Any) -> _Call:
        return _Call(name, (dep, *args), kwargs, "torch", out_shape, where, kind)

    if base is nn.Conv2d:
        return call(
            "conv2d",
            m.weight,
            None,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            __padding_mode__=m.padding_mode,
        )
    if base is nn.ConvTranspose2d:
        if m.padding_mode != "zeros":
            raise _Refuse(f"padding_mode={m.padding_mode!r}")
        return call(
            "conv_transpose2d", m.weight, None, m.stride, m.padding, m.output_padding,
            m.groups, m.dilation,
        )  # fmt: skip
    if base is nn.Linear:
        return call("linear", m.weight)
    if base is nn.modules.batchnorm._BatchNorm:
        uses_batch_stats = m.training or m.running_var is None
        return call("batch_norm", m.running_mean, m.running_var, m.weight, m.bias,
                    uses_batch_stats, m.momentum, m.eps)  # fmt: skip
    if base in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        return call("dropout", m.p, m.training)
    if base in (nn.Identity, nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten):
        return call("identity")
    if base is MaxMin:
        if dep.shape is None or len(dep.shape) < 2 or dep.shape[1] % 2:
            raise _Refuse("MaxMin needs an even number of channels")
        return call("__maxmin__")
    if base is nn.MaxPool2d:
        if m.return_indices:
            raise _Refuse("max pooling that returns indices")
        return call("max_pool2d", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if base is nn.AvgPool2d:
        return call("avg_pool2d", m.kernel_size, m.stride, m.padding, m.ceil_mode,
                    m.count_include_pad, m.divisor_override)  # fmt: skip
    if base is nn.AdaptiveAvgPool2d:
        return call("adaptive_avg_pool2d", m.output_size)
    if base is nn.Upsample:
        return call("interpolate", m.size, m.scale_factor, m.mode, m.align_corners,
                    m.recompute_scale_factor)  # fmt: skip
    activation = {
        nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
        nn.Hardsigmoid: "hardsigmoid", nn.Hardswish: "hardswish", nn.Softplus: "softplus",
        nn.Softsign: "softsign", nn.LogSigmoid: "log_sigmoid", nn.SELU: "selu",
        nn.SiLU: "silu",
    }  # fmt: skip
    if base in activation:
        return call(activation[base])
    if base is nn.LeakyReLU:
        return call("leaky_relu", m.negative_slope)
    if base is nn.PReLU:
        return call("prelu", m.weight)
    if base is nn.ELU:
        return call("elu", m.alpha)
    if base is nn.CELU:
        return call("celu", m.alpha)
    if base is nn.GELU:
        return call("gelu", approximate=m.approximate)
    if base is nn.Hardtanh:
        return call("hardtanh", m.min_val, m.max_val)
    raise _Refuse("unsupported module")


# --------------------------------------------------------------------------------------
# fx graphs (eager modules and torch.export programs)
# --------------------------------------------------------------------------------------


class _LeafTracer(fx.Tracer):
    """Keeps supported layers as call_module leaves; traces through everything else."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _leaf_type(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _Probe(fx.Interpreter):
    """Runs the graph once and keeps, per node, the value of constants (weights, sizes)
    and the shape of input-dependent tensors."""

    def __init__(self, gm: fx.GraphModule, dependent: set[fx.Node]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.dependent = dependent
        self.seen: dict[fx.Node, Any] = {}

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        # torch.export's shape guards pin the capture size; the bound is checked at ours.
        if str(target).startswith("_guards"):
            return None
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.seen[n] = _summarise(result, keep_tensors=n not in self.dependent)
        return result


_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


#: results that depend on the input's shape only (zeros, ones and fills like it)
_LIKE = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like"}


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_QUERIES or node.target in _LIKE
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
    if isinstance(node.target, torch._ops.OpOverload):
        return _aten_name(node.target) in _SHAPE_QUERIES | _LIKE
    name = _function_name(node.target)
    return name in _LIKE


def _dependent_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value changes with the input's values (shapes are fixed, so shape
    queries and everything computed from weights and sizes alone are constants)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    dependent: set[fx.Node] = set(placeholders[:1])
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output") or _is_shape_query(node):
            continue
        if any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _summarise(value: Any, *, keep_tensors: bool) -> Any:
    if isinstance(value, torch.Tensor):
        return value if keep_tensors else _Shape(value.shape, value.dtype)
    if isinstance(value, torch.Size):
        return tuple(int(s) for s in value)
    if isinstance(value, (list, tuple)):
        return type(value)(_summarise(v, keep_tensors=keep_tensors) for v in value)
    return value


def _owner(node: fx.Node, root_kind: str) -> tuple[str, str]:
    """(qualified name, type name) of the module a node belongs to."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        qualname, kind = list(stack.values())[-1]
        kind_name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
        return str(qualname), kind_name
    return "", root_kind


def _fx_bound(
    gm: fx.GraphModule, root: nn.Module, probe: torch.Tensor, ctx: _Ctx
) -> list[tuple[float, tuple[int, ...]]]:
    """Propagate bounds through ``gm``; returns (bound, shape) of each output tensor."""
    dependent = _dependent_nodes(gm)
    runner = _Probe(gm, dependent)
    try:
        with torch.no_grad():
            runner.run(probe)
    except Exception as exc:
        raise _probe_failure(root, probe, exc) from exc
    seen = runner.seen
    values: dict[fx.Node, _V] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    root_kind = type(root).__name__
    output_value: Any = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values[node] = _V(1.0) if node is placeholders[0] else _CONST
            continue
        if node.op == "get_attr":
            values[node] = _CONST
            continue
        if node.op == "output":
            output_value = node.args[0]
            continue
        if not node.users and node.op == "call_module" and str(node.target).startswith("_guards"):
            continue
        if node not in dependent:
            values[node] = _CONST
            continue
        values[node] = _fx_node(node, gm, seen, values, ctx, root_kind)
    outputs = []
    for n in _nodes_in(output_value):
        v, shape = values[n], seen.get(n)
        if v.refusal:
            raise UnsupportedLayer("", root_kind, f"its output: {v.refusal}")
        if v.dep:
            outputs.append((v.lip, tuple(shape) if _is_tensor_shape(shape) else ()))
    return outputs


def _nodes_in(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _nodes_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _nodes_in(v)


def _fx_node(
    node: fx.Node,
    gm: fx.GraphModule,
    seen: Mapping[fx.Node, Any],
    values: Mapping[fx.Node, _V],
    ctx: _Ctx,
    root_kind: str,
) -> _V:
    def resolve(a: Any) -> Any:
        if isinstance(a, fx.Node):
            v = values[a]
            if v.dep:
                shape = seen.get(a)
                return _Dep(v, shape if _is_tensor_shape(shape) else None)
            return seen.get(a)
        if isinstance(a, (list, tuple)):
            return type(a)(resolve(x) for x in a)
        if isinstance(a, dict):
            return {k: resolve(x) for k, x in a.items()}
        return a

    args = resolve(tuple(node.args))
    kwargs = resolve(dict(node.kwargs))
    out_shape = seen.get(node)
    if not _contains_dep((args, kwargs)):
        return _CONST
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        where, kind = str(node.target), type(module).__name__
        source = "torch"
    else:
        owner, owner_kind = _owner(node, root_kind)
        where, kind = owner, owner_kind
        source = "torch"
    try:
        if node.op == "call_module":
            dep = args[0] if args and isinstance(args[0], _Dep) else None
            if dep is None or len(_deps((args, kwargs))) != 1:
                raise _Refuse("expected one input tensor")
            if _leaf_type(module) is None:
                raise _Refuse("no known Lipschitz bound for this module type")
            _check_inplace(node, getattr(module, "inplace", False), gm)
            call = _module_call(module, dep, out_shape, where, kind)
            return _bound_call(call, ctx)
        if node.op == "call_method":
            name = str(node.target)
        elif isinstance(node.target, torch._ops.OpOverload):
            name = _aten_name(node.target)
            source = "aten"
        else:
            name = _function_name(node.target)
            if name is None:
                raise _Refuse(f"unknown function {node.target!r}")
        if source == "torch":
            args, kwargs = _normalise_torch_args(node, args, kwargs)
        _check_inplace(node, _is_inplace(name) or kwargs.pop("inplace", False) is True, gm)
        if _is_inplace(name):
            name = name[:-1]
        label = f"{where}/{node.name}" if where else node.name
        call = _Call(name, args, kwargs, source, out_shape, label, name)
        return _bound_call(call, ctx)
    except _Refuse as exc:
        if node.op == "call_module":
            raise UnsupportedLayer(where, kind, str(exc)) from None
        raise UnsupportedLayer(
            where, kind, f"operation {_op_label(node)!r} (node {node.name}): {exc}"
        ) from None


def _op_label(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)
    return _function_name(node.target) or repr(node.target)


def _normalise_torch_args(
    node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Bind a Python-level function's arguments to their names (``F.elu(x, 1.0)``).

    Handlers look an argument up by name first, then by its position in the ATen schema;
    builtins (``torch.cat``, ``F.conv2d``) and tensor methods follow ATen's order already,
    but Python-level ``F.*`` functions may not, so their arguments are passed by name.
    """
    if node.op != "call_function" or getattr(node.target, "__module__", "") != F.__name__:
        return args, kwargs
    try:
        signature = inspect.signature(node.target)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds or inspect.Parameter.VAR_KEYWORD in kinds:
        return args, kwargs
    named = dict(bound.arguments)
    first = next(iter(signature.parameters))
    head = named.pop(first)
    return (head,), named


def _check_inplace(node: fx.Node, inplace: bool, gm: fx.GraphModule) -> None:
    """An in-place op changes its input for every other user: only safe if there are none,
    along the chain of views (aliases) the input was taken from."""
    if not inplace:
        return
    current = node.args[0] if node.args else None
    while isinstance(current, fx.Node):
        if len(current.users) > 1:
            raise _Refuse("in-place operation on a tensor that is used elsewhere")
        if current.op == "placeholder" or not current.args or not _may_alias(current, gm):
            break
        current = current.args[0]


#: tensor methods and functions whose result may share memory with their first argument
_ALIASING = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "squeeze", "unsqueeze", "movedim", "alias", "view_as", "reshape_as", "detach", "to",
    "type_as", "float", "double", "slice", "select", "narrow", "expand", "expand_as",
    "chunk", "split", "unbind", "getitem", "as_strided", "diagonal", "real", "imag",
}  # fmt: skip
#: modules whose output is always a fresh tensor
_FRESH_MODULES = (
    nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Upsample,
)  # fmt: skip


def _may_alias(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node``'s result may share memory with its first argument."""
    if node.op == "call_module":
        return _leaf_type(gm.get_submodule(str(node.target))) not in _FRESH_MODULES
    if node.op == "call_method":
        return str(node.target).rstrip("_") in _ALIASING or _is_inplace(str(node.target))
    if isinstance(node.target, torch._ops.OpOverload):
        schema = node.target._schema
        if not schema.arguments or not schema.returns:
            return False
        return schema.arguments[0].alias_info is not None and (
            schema.returns[0].alias_info is not None
        )
    name = _function_name(node.target) or ""
    return name in _ALIASING or _is_inplace(name) or node.kwargs.get("inplace") is True


def _probe_failure(model: nn.Module, probe: torch.Tensor, exc: Exception) -> UnsupportedLayer:
    size = "x".join(str(s) for s in probe.shape[-2:])
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = getattr(model, "original_name", type(model).__name__)
    return UnsupportedLayer(
        "",
        kind,
        f"running it once on a 1 x 3 x {size} input, to learn its shapes, failed "
        f"({type(exc).__name__}: {detail}); pass an input size it accepts as input_size",
    )

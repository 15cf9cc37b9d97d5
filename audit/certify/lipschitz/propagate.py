"""The bound-propagation interpreter: one rule per operation, and the dispatch.

A front end resolves each operation of a model into a
:class:`~audit.certify.lipschitz.values._Call` and asks :func:`_bound_call` for the bound
of its result; the rule (handler) registered under the operation's name combines the
bounds of its input-dependent arguments with the layer's operator norm from
:mod:`audit.certify.lipschitz.norms`, and records that layer in the context.

How the pieces combine, on the function ``x -> logits`` in [0, 1] pixel space:

- composition multiplies: ``L(g o f) <= L(g) L(f)``;
- a sum of branches adds: ``L(a + b) <= L(a) + L(b)`` (a constant operand adds 0);
- a concatenation of branches (disjoint output coordinates) gives ``sqrt(sum L_i^2)``;
- broadcasting an input-dependent operand that repeats each of its entries ``r`` times
  multiplies its constant by ``sqrt(r)`` (exact for a repetition);
- multiplying or dividing by a constant ``c`` scales by ``max |c|`` or ``1 / min |c|``;
- ``MaxMin`` (GroupSort 2) written as ``chunk -> maximum, minimum -> cat`` is recognised as a
  whole (1-Lipschitz); taken op by op it would cost a factor 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from audit.certify.lipschitz.norms import (
    _pair,
    _Refuse,
    activation_bound,
    adaptive_avgpool_bound,
    avgpool_bound,
    batchnorm_bound,
    conv_bound,
    linear_bound,
    maxpool_bound,
    pad_copies,
    resize_bound,
)
from audit.certify.lipschitz.order import HANDLERS as ORDER_HANDLERS
from audit.certify.lipschitz.order import cat_pattern
from audit.certify.lipschitz.values import (
    _CONST,
    _SPLIT_IDS,
    _V,
    _broadcast_factor,
    _Call,
    _contains_dep,
    _Ctx,
    _Dep,
    _deps,
    _hw,
    _is_tensor_shape,
    _numel,
    _only_dep,
    _operands,
    _scale_of,
    _Shape,
)

# Ops that only move, copy without repetition, or cast entries: bound 1.
_PERMUTATIONS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "clone", "squeeze", "unsqueeze", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "movedim", "alias", "_unsafe_view", "view_as", "reshape_as", "detach", "float",
    "double", "to", "type_as", "identity", "lift_fresh_copy", "_to_copy",
    "slice", "select", "narrow", "positive", "neg", "negative", "flip", "roll",
}  # fmt: skip
_REPEATS = {"expand", "expand_as", "repeat", "tile", "broadcast_to"}
_SPLITS = {"chunk", "split", "split_with_sizes", "unbind", "tensor_split"}
_ELEMENTWISE = {
    "relu", "relu6", "tanh", "hardtanh", "softplus", "softsign", "abs", "clamp", "clip",
    "sigmoid", "hardsigmoid", "hardswish", "leaky_relu", "prelu", "elu", "selu", "celu",
    "gelu", "silu", "log_sigmoid", "logsigmoid",
}  # fmt: skip
_MULTI_OPERAND = {
    "add", "sub", "mul", "div", "truediv", "maximum", "minimum", "max", "min", "cat", "concat",
    "concatenate", "stack", "getitem",
}  # fmt: skip
_SHAPE_QUERIES = {"size", "dim", "numel", "sym_size", "sym_numel", "sym_stride", "stride"}


def _is_inplace(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_") and name != "_"


def _bound_call(call: _Call, ctx: _Ctx) -> _V:
    """The bound of one operation on its (resolved) arguments."""
    name = call.name
    deps = _deps((call.args, call.kwargs))
    if not deps:
        return _CONST
    if name in _SHAPE_QUERIES:
        return _CONST
    for dep in deps:
        if dep.v.refusal:
            raise _Refuse(dep.v.refusal)
    if call.out_shape is not None and _is_tensor_shape(call.out_shape):
        dtype = call.out_shape.dtype if isinstance(call.out_shape, _Shape) else None
        if dtype is not None and not dtype.is_floating_point:
            # Not an error yet: indices a model computes and never uses cost nothing.
            where = f" by {call.where}" if call.where else ""
            return _V(0.0, refusal=f"it uses {dtype} values computed from the input{where} "
                      "(integers that jump: not Lipschitz)")  # fmt: skip
    handler = _HANDLERS.get(name)
    if handler is None:
        raise _Refuse(f"operation {name!r} has no known Lipschitz bound")
    if name not in _MULTI_OPERAND and len(deps) != 1:
        # e.g. a convolution whose kernel or bias is computed from the input
        raise _Refuse("more than one argument depends on the input")
    return handler(call, ctx)


def _h_permutation(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    if call.name in ("slice", "select", "narrow") or _numel(call.out_shape) <= _numel(dep.shape):
        return _V(dep.v.lip)
    raise _Refuse("it outputs more entries than it reads")


def _h_repeat(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    factor = math.sqrt(max(1, _numel(call.out_shape) // max(1, _numel(dep.shape))))
    return _V(dep.v.lip * factor)


def _h_split(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    pieces = len(call.out_shape) if isinstance(call.out_shape, (list, tuple)) else 0
    if not pieces or _is_tensor_shape(call.out_shape):
        raise _Refuse("unexpected output of a split")
    dim = call.const(1, "dim", 0) if call.name == "unbind" else call.const(2, "dim", 0)
    ndim = len(dep.shape) if dep.shape is not None else 0
    dim = int(dim) % ndim if ndim else int(dim)
    token = next(_SPLIT_IDS)
    parts = tuple(_V(dep.v.lip, piece=(token, i, pieces, dim, dep.v.lip)) for i in range(pieces))
    return _V(dep.v.lip, parts=parts)


def _h_getitem(call: _Call, ctx: _Ctx) -> _V:
    container = call.args[0]
    index = call.args[1]
    if _contains_dep(index):
        raise _Refuse("indexing with input-dependent indices")
    if isinstance(container, _Dep) and container.v.parts is not None:
        return container.v.parts[index]
    if isinstance(container, (list, tuple)):
        item = container[index]
        return item.v if isinstance(item, _Dep) else _CONST
    if isinstance(container, _Dep) and container.shape is not None:
        items = index if isinstance(index, tuple) else (index,)
        basic = all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)
        if not basic:
            raise _Refuse("advanced indexing can repeat entries")
        return _V(container.v.lip)
    raise _Refuse("unexpected indexing")


def _h_cat(call: _Call, ctx: _Ctx) -> _V:
    tensors = call.get(0, "tensors")
    if not isinstance(tensors, (list, tuple)):
        raise _Refuse("unexpected arguments")
    items = [t for t in tensors if isinstance(t, _Dep)]
    if len(items) != len(_deps((call.args, call.kwargs))):
        raise _Refuse("unexpected arguments")
    matched = cat_pattern(items, ctx, call.where)
    if matched is not None:
        return matched
    return _V(math.sqrt(sum(t.v.lip**2 for t in items)))


def _h_add(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    alpha = call.const(2, "alpha", 1)
    lip = 0.0
    if isinstance(a, _Dep):
        lip += a.v.lip * _broadcast_factor(a, call.out_shape)
    if isinstance(b, _Dep):
        lip += b.v.lip * _broadcast_factor(b, call.out_shape) * abs(float(alpha))
    if _contains_dep(alpha):
        raise _Refuse("input-dependent alpha")
    return _V(lip)


def _h_mul(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    if isinstance(a, _Dep) and isinstance(b, _Dep):
        raise _Refuse("it multiplies two input-dependent tensors (not globally Lipschitz)")
    dep, const = (a, b) if isinstance(a, _Dep) else (b, a)
    factor = _scale_of(const, inverse=False)
    return _V(dep.v.lip * factor * _broadcast_factor(dep, call.out_shape))


def _h_div(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    if isinstance(b, _Dep):
        raise _Refuse("it divides by an input-dependent tensor")
    if call.kwargs.get("rounding_mode") is not None:
        raise _Refuse("rounding division is not continuous")
    factor = _scale_of(b, inverse=True)
    return _V(a.v.lip * factor * _broadcast_factor(a, call.out_shape))


def _h_activation(call: _Call, ctx: _Ctx) -> _V:
    name = call.name.rstrip("_") if _is_inplace(call.name) else call.name
    params: dict[str, Any] = {}
    if name == "leaky_relu":
        params["negative_slope"] = call.const(1, "negative_slope", 0.01)
    elif name == "elu":
        params["alpha"] = call.const(1, "alpha", 1.0)
        if call.source == "aten":
            params["scale"] = call.const(2, "scale", 1.0)
            params["input_scale"] = call.const(3, "input_scale", 1.0)
    elif name == "celu":
        params["alpha"] = call.const(1, "alpha", 1.0)
    elif name == "gelu":
        params["approximate"] = call.const(1, "approximate", "none")
    elif name == "prelu":
        params["weight"] = call.const(1, "weight")
    elif name in ("clamp", "clip", "hardtanh"):
        for i, key in ((1, "min"), (2, "max")):
            call.const(i, key)
        name = "clamp"
    factor, how = activation_bound(name, params)
    dep = _only_dep(call)
    ctx.add(call.where, call.kind, factor, how)
    return _V(dep.v.lip * factor)


def _h_conv(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    weight = call.const(1, "weight")
    if not isinstance(weight, torch.Tensor):
        raise _Refuse("the kernel is not a constant tensor")
    if call.name == "conv_transpose2d":
        stride, padding = call.const(3, "stride", 1), call.const(4, "padding", 0)
        groups, dilation = call.const(6, "groups", 1), call.const(7, "dilation", 1)
        transposed = True
    elif call.name in ("convolution", "_convolution"):
        stride, padding = call.const(3, "stride", 1), call.const(4, "padding", 0)
        dilation, transposed = call.const(5, "dilation", 1), call.const(6, "transposed", False)
        groups = call.const(8, "groups", 1)
    else:
        stride, padding = call.const(3, "stride", 1), call.const(4, "padding", 0)
        dilation, groups = call.const(5, "dilation", 1), call.const(6, "groups", 1)
        transposed = False
    if weight.dim() != 4:
        raise _Refuse("only 2-D convolutions are supported")
    padding_mode = call.kwargs.get("__padding_mode__", "zeros")
    fused = _circular_conv(dep, padding, transposed, weight.shape[-2:], _pair(dilation))
    if fused is not None:
        # pad(circular) then an unpadded convolution is one circular convolution of the
        # unpadded input: bounded as such, not as (copies of the pad) x (kernel norm)
        padding, padding_mode, source_lip, source_shape, pad_entry = fused
        dep = _Dep(_V(source_lip), _Shape(source_shape, torch.float32))
        if pad_entry in ctx.layers:  # the pad's own factor is not part of this product
            ctx.layers.remove(pad_entry)
    copies, in_shape = 1, dep.shape
    if padding_mode in ("reflect", "replicate") and not transposed:
        # The pad copies border entries (norm sqrt(most copies)); the unpadded convolution
        # of the padded input is a restriction of the zero-padded one.
        copies, in_shape = _copying_pad(ctx, padding_mode, padding, dep.shape)
        padding, padding_mode = 0, "zeros"
    bound, how = _conv_with_size(
        ctx,
        weight,
        groups=int(groups),
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        transposed=bool(transposed),
        in_shape=in_shape,
        out_shape=call.out_shape,
    )
    if copies > 1:
        bound *= math.sqrt(copies)
        how = (
            f"{call.kwargs['__padding_mode__']} padding (up to {copies} copies of an entry) x {how}"
        )
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _copying_pad(
    ctx: _Ctx, mode: str, padding: Any, shape: Any
) -> tuple[int, tuple[int, ...] | None]:
    """(most copies of one entry, padded shape) of a reflect or replicate pad."""
    if isinstance(padding, str):
        raise _Refuse(f"padding={padding!r} with padding_mode={mode!r}")
    amounts = _pair(padding)
    hw = _hw(shape)
    copies = 1
    for axis, amount in enumerate(amounts):
        size = hw[axis] if hw is not None and ctx.sized else None
        copies *= pad_copies(mode, amount, amount, size)
    if ctx.sized:
        ctx.size_specific.append(f"{mode} padding")
    if shape is None or hw is None:
        return copies, None
    padded = (*tuple(shape)[:-2], hw[0] + 2 * amounts[0], hw[1] + 2 * amounts[1])
    return copies, _Shape(padded, torch.float32)


def _circular_conv(
    dep: _Dep, padding: Any, transposed: Any, kernel: Any, dilation: tuple[int, int]
) -> tuple[tuple[int, int], str, float, tuple[int, ...], Any] | None:
    """(padding, mode, source bound, source shape, the pad's layer entry) if ``dep`` was
    padded circularly, evenly on both sides of H and W, no wider than the kernel's reach,
    and the convolution adds no padding of its own."""
    circular = dep.v.circular
    if circular is None or transposed or padding not in (0, "valid", (0, 0), [0, 0]):
        return None
    pads, shape, lip, entry = circular
    if len(pads) != 4 or pads[0] != pads[1] or pads[2] != pads[3]:
        return None
    reach = [(int(k) - 1) * d for k, d in zip(kernel, dilation, strict=True)]
    if 2 * pads[2] > reach[0] or 2 * pads[0] > reach[1]:
        return None
    return (pads[2], pads[0]), "circular", lip, shape, entry


def _conv_with_size(
    ctx: _Ctx, weight: torch.Tensor, *, in_shape: Any, out_shape: Any, **kwargs: Any
) -> tuple[float, str]:
    in_hw = _hw(in_shape) if ctx.sized else None
    out_hw = _hw(out_shape) if ctx.sized else None
    bound, how = conv_bound(weight, in_hw=in_hw, out_hw=out_hw, **kwargs)
    if "torus" in how:
        ctx.size_specific.append("convolution norms at the layers' sizes")
    return bound, how


def _h_linear(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    weight = call.const(1, "weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise _Refuse("the weight is not a constant matrix")
    bound, how = linear_bound(weight)
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_batch_norm(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    if call.source == "torch":  # F.batch_norm(input, running_mean, running_var, weight, ...)
        running_var, weight = call.const(2, "running_var"), call.const(3, "weight")
        training, eps = call.const(5, "training", False), call.const(7, "eps", 1e-5)
    elif call.name == "_native_batch_norm_legit_no_training":
        weight, running_var = call.const(1, "weight"), call.const(4, "running_var")
        training, eps = False, call.const(6, "eps", 1e-5)
    else:  # aten::batch_norm(input, weight, bias, running_mean, running_var, training, ...)
        weight, running_var = call.const(1, "weight"), call.const(4, "running_var")
        training, eps = call.const(5, "training", False), call.const(7, "eps", 1e-5)
    if training:
        raise _Refuse("BatchNorm in training mode uses batch statistics; call eval()")
    bound, how = batchnorm_bound(weight, running_var, float(eps))
    ctx.add(call.where, call.kind, bound, how)
    v = _V(dep.v.lip * bound)
    if call.name == "_native_batch_norm_legit_no_training":
        return _V(v.lip, parts=(v, _CONST, _CONST))
    return v


def _h_dropout(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    if call.const(2, "train" if call.source == "aten" else "training", False) and float(
        call.const(1, "p", 0.5)
    ):
        raise _Refuse("dropout in training mode; call eval()")
    return _V(dep.v.lip)


def _h_max_pool(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    kernel = call.const(1, "kernel_size")
    stride = call.const(2, "stride", None)
    dilation = call.const(4, "dilation", 1)
    if call.source == "torch" and call.const(6, "return_indices", False):
        raise _Refuse("max pooling that returns indices")
    bound, how = maxpool_bound(kernel, stride, dilation)
    ctx.add(call.where, call.kind, bound, how)
    v = _V(dep.v.lip * bound)
    if call.name == "max_pool2d_with_indices":
        return _V(v.lip, parts=(v, _CONST))
    return v


def _h_avg_pool(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    in_hw = _hw(dep.shape) if ctx.sized else None
    bound, how = avgpool_bound(
        call.const(1, "kernel_size"),
        call.const(2, "stride", None),
        call.const(3, "padding", 0),
        ceil_mode=bool(call.const(4, "ceil_mode", False)),
        count_include_pad=bool(call.const(5, "count_include_pad", True)),
        divisor_override=call.const(6, "divisor_override", None),
        in_hw=in_hw,
    )
    if "exact" in how:
        ctx.size_specific.append("average pooling")
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_adaptive_avg_pool(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    out_hw = _hw(call.out_shape)
    if out_hw is None:
        raise _Refuse("unexpected output")
    in_hw = _hw(dep.shape) if ctx.sized else None
    bound, how = adaptive_avgpool_bound(in_hw, out_hw)
    if in_hw is not None:
        ctx.size_specific.append("adaptive average pooling")
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_mean(call: _Call, ctx: _Ctx) -> _V:
    dep = _only_dep(call)
    # A mean over n entries has norm 1/sqrt(n) <= 1.
    count = max(1, _numel(dep.shape) // max(1, _numel(call.out_shape)))
    bound = 1 / math.sqrt(count) if ctx.sized else 1.0
    if ctx.sized:
        ctx.size_specific.append("means")
    ctx.add(call.where, call.kind, bound, "mean over n entries: 1/sqrt(n)")
    return _V(dep.v.lip * bound)


def _h_interpolate(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    in_hw, out_hw = _hw(dep.shape), _hw(call.out_shape)
    if dep.shape is None or len(dep.shape) != 4 or in_hw is None or out_hw is None:
        raise _Refuse("only 2-D (N x C x H x W) interpolation is supported")
    if not ctx.sized:
        raise _Refuse("the norm of a resize depends on the input size (pass input_size)")
    if call.source == "torch":
        mode = call.const(3, "mode", "nearest")
        align = call.const(4, "align_corners", None)
        scale = call.const(2, "scale_factor", None)
        recompute = call.const(5, "recompute_scale_factor", None)
        antialias = bool(call.const(6, "antialias", False))
        if call.get(1, "size") is not None:
            scale = None
    else:
        mode = {
            "upsample_bilinear2d": "bilinear",
            "upsample_bicubic2d": "bicubic",
            "upsample_nearest2d": "nearest",
            "_upsample_nearest_exact2d": "nearest-exact",
            "_upsample_bilinear2d_aa": "bilinear",
            "_upsample_bicubic2d_aa": "bicubic",
        }[call.name]
        antialias = call.name.endswith("_aa")
        if mode in ("bilinear", "bicubic"):
            align, scale = call.const(2, "align_corners", False), call.const(3, "scale_factors")
        else:
            align, scale = None, call.const(2, "scale_factors")
        if call.const(1, "output_size") is not None:
            scale = None
        recompute = None
    if isinstance(scale, (int, float)):
        scale = (float(scale), float(scale))
    if mode == "bilinear" and align is None:
        align = False
    bound, how = resize_bound(
        in_hw,
        out_hw,
        mode=mode,
        align_corners=align,
        scale_factor=scale,
        recompute_scale_factor=recompute,
        antialias=antialias,
    )
    ctx.size_specific.append("interpolation")
    ctx.add(call.where, call.kind, bound, how)
    return _V(dep.v.lip * bound)


def _h_pad(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    mode = {"reflection_pad2d": "reflect", "replication_pad2d": "replicate"}.get(
        call.name, call.const(2, "mode", "constant")
    )
    if mode == "constant" or call.name == "constant_pad_nd":
        return _V(dep.v.lip)
    pads = tuple(int(p) for p in call.const(1, "pad"))
    if dep.shape is None or len(pads) % 2 or len(pads) // 2 > len(dep.shape):
        raise _Refuse(f"unexpected padding {list(pads)}")
    copies = 1
    for axis in range(len(pads) // 2):
        before, after = pads[2 * axis], pads[2 * axis + 1]
        size = int(dep.shape[-1 - axis])
        copies *= pad_copies(mode, before, after, size if ctx.sized else None)
    bound = math.sqrt(copies)
    if ctx.sized:
        ctx.size_specific.append(f"{mode} padding")
    ctx.add(call.where, call.kind, bound, f"{mode} padding: sqrt(most copies of one entry)")
    v = _V(dep.v.lip * bound)
    if mode == "circular":
        v.circular = (pads, tuple(dep.shape), dep.v.lip, ctx.layers[-1])
    return v


def _h_module_identity(call: _Call, ctx: _Ctx) -> _V:
    ctx.add(call.where, call.kind, 1.0, "permutation or identity")
    return _V(call.tensor(0).v.lip)


def _h_module_maxmin(call: _Call, ctx: _Ctx) -> _V:
    ctx.add(call.where, call.kind, 1.0, "GroupSort of pairs: 1-Lipschitz")
    return _V(call.tensor(0).v.lip)


_HANDLERS: dict[str, Callable[[_Call, _Ctx], _V]] = {}
for _name in _PERMUTATIONS:
    _HANDLERS[_name] = _h_permutation
for _name in _REPEATS:
    _HANDLERS[_name] = _h_repeat
for _name in _SPLITS:
    _HANDLERS[_name] = _h_split
for _name in _ELEMENTWISE:
    _HANDLERS[_name] = _h_activation
_HANDLERS.update(ORDER_HANDLERS)
_HANDLERS.update(
    {
        "getitem": _h_getitem,
        "cat": _h_cat,
        "concat": _h_cat,
        "concatenate": _h_cat,
        "stack": _h_cat,
        "add": _h_add,
        "sub": _h_add,
        "mul": _h_mul,
        "div": _h_div,
        "truediv": _h_div,
        "conv2d": _h_conv,
        "conv_transpose2d": _h_conv,
        "convolution": _h_conv,
        "_convolution": _h_conv,
        "linear": _h_linear,
        "batch_norm": _h_batch_norm,
        "_native_batch_norm_legit_no_training": _h_batch_norm,
        "dropout": _h_dropout,
        "feature_dropout": _h_dropout,
        "max_pool2d": _h_max_pool,
        "max_pool2d_with_indices": _h_max_pool,
        "avg_pool2d": _h_avg_pool,
        "adaptive_avg_pool2d": _h_adaptive_avg_pool,
        "mean": _h_mean,
        "interpolate": _h_interpolate,
        "upsample_bilinear2d": _h_interpolate,
        "upsample_bicubic2d": _h_interpolate,
        "upsample_nearest2d": _h_interpolate,
        "_upsample_nearest_exact2d": _h_interpolate,
        "_upsample_bilinear2d_aa": _h_interpolate,
        "_upsample_bicubic2d_aa": _h_interpolate,
        "pad": _h_pad,
        "constant_pad_nd": _h_pad,
        "reflection_pad2d": _h_pad,
        "replication_pad2d": _h_pad,
    }
)
_HANDLERS["identity"] = _h_module_identity
_HANDLERS["__maxmin__"] = _h_module_maxmin

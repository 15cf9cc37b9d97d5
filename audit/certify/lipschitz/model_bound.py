"""A provable upper bound of a whole model's L2 Lipschitz constant: the entry point.

Why: a Lipschitz certificate is only as good as its constant ``L`` (reference section 3).
Power iteration gives a *lower* estimate of a spectral norm, and a constant stated in a
model's metadata is a hypothesis.  This module derives ``L`` from the weights, layer by
layer, with a bound that holds by proof for every layer it accepts, and refuses
(:class:`UnsupportedLayer`) everything else instead of assuming 1.

On the function ``x -> logits`` in [0, 1] pixel space, :func:`lipschitz_bound` refuses a
model in training mode, picks the front end for its format (:mod:`.fx_graph` for eager
modules and ``torch.export`` programs, :mod:`.torchscript` for TorchScript), and adds the
parts of the :class:`~audit.model.wrapper.SegmentationWrapper` around the model:

- the :class:`~audit.model.wrapper.SegmentationWrapper`: its normalisation ``(x - mean) / std``
  contributes ``1 / min |std|`` (multiplied, never divided), and if the model predicts at a
  lower resolution, the bilinear resize of its logits contributes the exact norm of that
  resize at the input size (about the scale factor; the model's output size is found by
  running it once).

Shapes come from one forward pass at ``input_size`` (or the metadata's size, or 64 x 64 for
shape checks only).  A bound that depends on the input size holds at that size only, and
``method`` says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from audit.certify.lipschitz.fx_graph import (
    _fx_bound,
    _leaf_type,
    _LeafTracer,
    _owner,
    _probe_failure,
)
from audit.certify.lipschitz.norms import _f64, _Refuse, resize_bound
from audit.certify.lipschitz.torchscript import _ts_graph_bound
from audit.certify.lipschitz.values import LayerBound, UnsupportedLayer, _Ctx
from audit.model.frozen_training import torchscript_training_ops
from audit.model.wrapper import SegmentationWrapper

__all__ = ["DEFAULT_PROBE_SIZE", "LipschitzBound", "lipschitz_bound"]

#: probe size when neither ``input_size`` nor the metadata gives one (shape checks only)
DEFAULT_PROBE_SIZE = (64, 64)


@dataclass(frozen=True)
class LipschitzBound:
    """A provable upper bound of the L2 Lipschitz constant of the whole audited function."""

    value: float
    layers: tuple[LayerBound, ...]
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": self.method,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }


def lipschitz_bound(
    module: nn.Module, *, input_size: tuple[int, int] | None = None
) -> LipschitzBound:
    """A provable upper bound of the L2 Lipschitz constant of ``module`` on ``N x 3 x H x W``.

    ``module`` is usually the :class:`SegmentationWrapper` the harness audits (normalisation
    and output resize included); a bare model is bounded as is.  ``input_size`` (H, W), else
    the wrapper's metadata ``input_size``, fixes the size at which size-dependent parts
    (resizes, circular convolutions, pooling at borders) are bounded; without either, those
    are refused and the bound holds for every input size.  Raises :class:`UnsupportedLayer`
    naming the first layer it cannot bound.
    """
    if input_size is not None and (
        len(input_size) != 2 or any(not isinstance(v, int) or v < 1 for v in input_size)
    ):
        raise ValueError(f"input_size must be (H, W) with positive integers, got {input_size!r}")
    wrapper = module if isinstance(module, SegmentationWrapper) else None
    model = wrapper.model if wrapper is not None else module
    size = input_size
    size_source = "given"
    if size is None and wrapper is not None and wrapper.metadata.input_size is not None:
        size = tuple(wrapper.metadata.input_size)
        size_source = "from the model's metadata"
    ctx = _Ctx(sized=size is not None)
    probe_hw = tuple(int(s) for s in size) if size is not None else DEFAULT_PROBE_SIZE
    probe = _probe_input(model, probe_hw)
    factor = 1.0
    parts: list[str] = []
    if wrapper is not None and wrapper.normalises:
        std = _f64(wrapper.std).abs()
        if float(std.min()) == 0:
            raise UnsupportedLayer("", "SegmentationWrapper", "a normalisation std of 0")
        factor = 1.0 / float(std.min())
        ctx.add("<normalisation>", "SegmentationWrapper", factor, "(x - mean) / std: 1 / min |std|")
        parts.append(f"normalisation 1/min(std) = {factor:.6g}")
    outputs, how = _model_bound(model, probe, ctx)
    parts.append(how)
    value = 0.0
    resizes: dict[tuple[int, int], float] = {}
    for lip, shape in outputs:
        if wrapper is not None and len(shape) == 4 and tuple(shape[-2:]) != probe_hw:
            low = (int(shape[-2]), int(shape[-1]))
            if low not in resizes:
                resizes[low] = _wrapper_resize(low, probe_hw, ctx)
            lip *= resizes[low]
        value = max(value, lip)
    if resizes:
        parts.append(f"bilinear resize of the logits x{max(resizes.values()):.6g}")
    value *= factor
    if ctx.size_specific:
        kinds = ", ".join(dict.fromkeys(ctx.size_specific))
        validity = f"holds at input size {probe_hw[0]}x{probe_hw[1]} ({size_source}) only ({kinds})"
    else:
        validity = "holds for every input size"
    method = "; ".join([*parts, validity])
    return LipschitzBound(value=float(value), layers=tuple(ctx.layers), method=method)


def _wrapper_resize(low: tuple[int, int], hw: tuple[int, int], ctx: _Ctx) -> float:
    """Norm of the wrapper's bilinear resize of low-resolution logits to the input size."""
    if not ctx.sized:
        raise UnsupportedLayer(
            "<resize>",
            "SegmentationWrapper",
            f"the model predicts at {low[0]}x{low[1]} for a {hw[0]}x{hw[1]} input and the "
            "wrapper resizes its logits; the norm of that resize depends on the input size: "
            "pass input_size (or set the metadata's input_size)",
        )
    try:
        resize, how = resize_bound(low, hw, mode="bilinear", align_corners=False)
    except _Refuse as exc:
        raise UnsupportedLayer("<resize>", "SegmentationWrapper", str(exc)) from None
    ctx.add("<resize>", "SegmentationWrapper", resize, how)
    ctx.size_specific.append("the wrapper's resize of the logits")
    return resize


def _probe_input(model: nn.Module, hw: tuple[int, int]) -> torch.Tensor:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, 3, *hw, dtype=dtype, device=device)


def _model_bound(
    model: nn.Module, probe: torch.Tensor, ctx: _Ctx
) -> tuple[list[tuple[float, tuple[int, ...]]], str]:
    """(bound, shape) of each output tensor of the bare model, and how they were found."""
    if isinstance(model, torch.jit.ScriptModule):
        training = torchscript_training_ops(model)
        if training:
            raise UnsupportedLayer(
                "", getattr(model, "original_name", "ScriptModule"),
                f"it was captured in training mode ({training[0]}); call eval() before tracing",
            )  # fmt: skip
        try:
            outputs = _ts_graph_bound(model, probe, ctx)
        except UnsupportedLayer:
            raise
        except Exception as exc:
            raise _probe_failure(model, probe, exc) from exc
        return outputs, "propagated through the model's TorchScript graph (inlined ATen ops)"
    if isinstance(model, fx.GraphModule):
        _check_graph_training(model)
        outputs = _fx_bound(model, model, probe, ctx)
        return outputs, "propagated through the model's fx/ATen graph"
    _check_module_training(model)
    if _leaf_type(model) is not None:
        # The tracer never keeps the root as a leaf; a container lets it see the layer.
        model = nn.Sequential(model)
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:
        # Control flow on shapes (deel-torchlip's GroupSort) defeats torch.fx but not
        # torch.export, which runs the model at the probe's shape and records the ATen ops.
        gm = _exported(model, probe, exc)
        outputs = _fx_bound(gm, model, probe, ctx)
        how = (
            "propagated through the model's ATen graph (torch.export at the probe size, as "
            "torch.fx could not trace it)"
        )
        return outputs, how
    gm = fx.GraphModule(model, graph)
    _check_trace_faithful(model, gm, probe)
    outputs = _fx_bound(gm, model, probe, ctx)
    how = "propagated through the model's torch.fx graph (layers multiply, sums add)"
    return outputs, how


def _exported(model: nn.Module, probe: torch.Tensor, fx_error: Exception) -> fx.GraphModule:
    try:
        program = torch.export.export(model, (probe,), strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsupportedLayer(
            "",
            type(model).__name__,
            f"neither torch.fx ({type(fx_error).__name__}: {fx_error}) nor torch.export "
            f"({type(exc).__name__}: {first}) can capture its graph",
        ) from exc
    gm = program.module()
    _check_graph_training(gm)
    return gm


def _check_module_training(model: nn.Module) -> None:
    """Refuse before running anything: a probe would update BatchNorm statistics."""
    for qualname, sub in model.named_modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0:
            raise UnsupportedLayer(
                qualname, type(sub).__name__, "dropout in training mode; call eval()"
            )
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and (
            sub.training or sub.running_var is None
        ):
            raise UnsupportedLayer(
                qualname, type(sub).__name__,
                "BatchNorm in training mode (or without running statistics) normalises with "
                "batch statistics; call eval()",
            )  # fmt: skip


def _check_graph_training(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        for position, arg in enumerate(target._schema.arguments):
            if arg.name not in ("training", "train"):
                continue
            value = (
                node.args[position]
                if position < len(node.args)
                else node.kwargs.get(arg.name, arg.default_value)
            )
            if value is True:
                where, kind = _owner(node, type(gm).__name__)
                raise UnsupportedLayer(
                    where, kind, f"{target} was captured in training mode; call eval() first"
                )


def _check_trace_faithful(model: nn.Module, gm: fx.GraphModule, probe: torch.Tensor) -> None:
    """The bound is computed on the traced graph: it must compute what the module computes."""
    x = torch.rand(probe.shape, generator=torch.Generator().manual_seed(0)).to(probe)
    with torch.no_grad():
        try:
            expected = model(x)
        except Exception as exc:
            raise _probe_failure(model, probe, exc) from exc
        got = gm(x)
    for a, b in zip(_tensors(expected), _tensors(got), strict=False):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise UnsupportedLayer(
                "",
                type(model).__name__,
                "its torch.fx trace does not reproduce its output (in-place updates or "
                "control flow the trace cannot see)",
            )


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []

"""Find training-mode behaviour frozen into a traced or exported graph.

``torch.jit.trace`` and ``torch.export`` record BatchNorm and dropout with the *constant*
training flag the model had when it was captured.  ``eval()`` cannot undo that, so such a
model would update its BatchNorm statistics on every audited batch and give answers that
depend on batch composition and on random dropout masks.  The loader refuses those files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

# Schema argument names that switch an op into training behaviour (batch_norm's
# ``training``, dropout's ``train``).
_TRAINING_ARGS = ("training", "train")


def torchscript_training_ops(module: torch.jit.ScriptModule) -> list[str]:
    """Ops in ``module``'s graph whose training flag is the constant ``True``.

    Scripted (not traced) modules read ``self.training`` at run time instead; those are
    fine, since the wrapper calls ``eval()``.
    """
    found: list[str] = []
    for node in _walk_torchscript(module.inlined_graph):
        schema_text = node.schema()
        if schema_text == "(no schema)":
            continue
        schema = torch._C.parse_schema(schema_text)
        for arg, value in zip(schema.arguments, node.inputs(), strict=False):
            if arg.name not in _TRAINING_ARGS or value.node().kind() != "prim::Constant":
                continue
            if value.toIValue() is True:
                found.append(f"{node.kind()} with {arg.name}=True")
    return found


def _walk_torchscript(graph: Any) -> Iterator[Any]:
    for node in graph.nodes():
        yield node
        for block in node.blocks():
            yield from _walk_torchscript(block)


def export_training_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Ops in an exported program that were captured with a training flag set to ``True``."""
    found: list[str] = []
    # Control-flow ops (cond, map) keep their branches in nested graph modules.
    nodes = [
        node
        for graph_module in program.graph_module.modules()
        if isinstance(graph_module, torch.fx.GraphModule)
        for node in graph_module.graph.nodes
    ]
    for node in nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        for position, arg in enumerate(target._schema.arguments):
            if arg.name not in _TRAINING_ARGS:
                continue
            if position < len(node.args):
                value = node.args[position]
            else:
                value = node.kwargs.get(arg.name, arg.default_value)
            if value is True:
                found.append(f"{target} with {arg.name}=True")
    return found

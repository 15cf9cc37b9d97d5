"""A content hash of a module's state, to prove that auditing it changed nothing."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def fingerprint_module(module: nn.Module, *, include_grads: bool = False) -> dict[str, str]:
    """Map every parameter and buffer name to the SHA-256 of its dtype, shape and bytes.

    Also records ``requires_grad:<param>`` flags and ``training:<submodule>`` flags (the
    root module is ``training:<root>``).  With ``include_grads`` each parameter's ``.grad``
    is recorded too (``grad:<param>``), to catch code that calls ``loss.backward()`` and
    leaves gradients on the user's model instead of using ``torch.autograd.grad``.
    Compare two fingerprints with ``==``.
    """
    out: dict[str, str] = {}
    for name, param in module.named_parameters():
        out[name] = tensor_digest(param)
        out[f"requires_grad:{name}"] = str(param.requires_grad)
        if include_grads:
            out[f"grad:{name}"] = "none" if param.grad is None else tensor_digest(param.grad)
    for name, buffer in module.named_buffers():
        out[name] = tensor_digest(buffer)
    for name, submodule in module.named_modules():
        out[f"training:{name or '<root>'}"] = str(submodule.training)
    return out


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 hex of a tensor's dtype, shape and exact bytes (device-independent)."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{data.dtype}|{tuple(tensor.shape)}|".encode())
    try:
        digest.update(data.view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError):
        # Quantized and other exotic dtypes cannot be reinterpreted as bytes.
        digest.update(repr(data.tolist()).encode())
    return digest.hexdigest()

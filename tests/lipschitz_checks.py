"""Shared checks for the Lipschitz bound tests: exact norms from dense Jacobians, and a
model saved in every format SegAudit loads, loaded back as a user's file would be."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from audit.model import load_model

N = 8  # spatial size of the exact checks


def dense_jacobian(model: nn.Module, x: torch.Tensor, *, float64: bool = True) -> torch.Tensor:
    """Jacobian of ``model`` at ``x`` (of a float64 copy unless ``float64`` is False, for
    models whose weights are computed by float32-only code), as an (outputs x inputs)
    matrix."""
    twin = double(model) if float64 else model
    x = x.double() if float64 else x
    jac = torch.autograd.functional.jacobian(lambda t: _tensor(twin(t)), x)
    return jac.reshape(-1, x.numel())


def _tensor(out: object) -> torch.Tensor:
    if isinstance(out, dict):
        return torch.cat([v.flatten() for v in out.values()])
    return out  # type: ignore[return-value]


def double(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # .double() on TorchScript reads .grad
        return copy.deepcopy(model).double().eval()


def exact_norm(model: nn.Module, size: int = N) -> float:
    """Operator norm of a linear model on 1 x 3 x size x size inputs."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return float(torch.linalg.matrix_norm(dense_jacobian(model, x), ord=2))


def jacobian_norm_at(model: nn.Module, x: torch.Tensor, *, float64: bool = True) -> float:
    jacobian = dense_jacobian(model, x, float64=float64).double()
    return float(torch.linalg.matrix_norm(jacobian, ord=2))


def steepest(
    model: nn.Module, size: int = N, points: int = 4, channels: int = 3, float64: bool = True
) -> float:
    """The largest Jacobian norm at a few random points: a lower bound of the constant,
    and the constant itself for piecewise-linear maps whose pieces share one norm."""
    found = 0.0
    for seed in range(points):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(1, channels, size, size, generator=g)
        found = max(found, jacobian_norm_at(model, x, float64=float64))
    return found


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory().eval()


def saved_formats(
    model: nn.Module, folder: Path, *, size: int = N, script: bool = True
) -> dict[str, nn.Module]:
    """``model`` as given, and traced, scripted (if ``script``) and exported to files,
    each loaded back with :func:`audit.model.load_model` (the bare model, unwrapped)."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = model.eval()
    files: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files["trace"] = folder / "traced.pt"
        torch.jit.save(torch.jit.trace(model, x, strict=False), files["trace"])
        if script:
            files["script"] = folder / "scripted.pt"
            torch.jit.save(torch.jit.script(model), files["script"])
        files["export"] = folder / "exported.pt2"
        torch.export.save(torch.export.export(model, (x,)), files["export"])
    loaded: dict[str, nn.Module] = {"eager": model}
    for name, path in files.items():
        loaded[name] = load_model(path).module.model
    return loaded

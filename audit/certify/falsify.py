"""Search for a pair of inputs that shows how large a model's Lipschitz constant really is.

Why: a constant *claimed* in metadata or a suite is a hypothesis (reference section 3).  Any
pair ``(x, y)`` gives ``||f(x) - f(y)||_2 / ||x - y||_2 <= L``, so a pair with a larger
ratio than the claim proves the claim false.  This module looks for such pairs near data
points and returns the best one together with the ratio it achieves: a true lower bound of
the constant, witnessed by two concrete images in [0, 1].

Two searches, the better result kept:

(a) power iteration on ``J^T J`` at each data point (``J`` the Jacobian of the model there),
    with ``J v`` by double backward and ``J^T u`` by one backward pass.  It finds the
    direction the model stretches most locally; that direction is then turned into a real
    pair ``(x, x + r v)``, with ``x`` moved inside the box by at most ``r max|v|`` per pixel
    so that the pair needs no clipping, and the ratio is measured on the pair.
(b) projected gradient ascent on ``log ||f(x + d) - f(x)|| - log ||d||`` over ``d`` on the
    sphere ``||d|| = r`` (and ``x + d`` in [0, 1]), starting from (a)'s direction: the local
    linearisation may understate what a finite step achieves, and vice versa.

Rounding: the ratio of a pair is a difference quotient, so the model's rounding error is
divided by ``||x - y||``.  Modules are therefore evaluated through a float64 copy (the model
itself is never modified), where the error is negligible at ``r = 1e-2``.  Plain callables
that do not accept float64 input run in their own precision; then the pair distance is
raised so that the output difference dwarfs the rounding, and a conservative rounding
allowance ``1e-5 (||f(x)|| + ||f(y)||)`` is subtracted from it before dividing, so that noise
cannot fabricate a violation.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from audit.errors import EvaluationError

__all__ = ["LowerBound", "lipschitz_lower_bound"]

#: relative rounding allowance subtracted from output distances when not in float64
_ROUNDING = {torch.float64: 0.0, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
#: in reduced precision the output distance must be this many times the allowance
_SIGNAL_TO_ROUNDING = 1e3


@dataclass(frozen=True)
class LowerBound:
    """``value = ||f(x) - f(y)||_2 / ||x - y||_2`` for the pair found (each ``1 x C x H x W``).

    ``x`` and ``y`` are in the dtype the ratio was measured in (float64 when the model could
    be evaluated in float64); ``method`` says how they were found and evaluated.
    """

    value: float
    x: torch.Tensor
    y: torch.Tensor
    method: str


def lipschitz_lower_bound(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    generator: torch.Generator,
    power_steps: int = 30,
    ascent_steps: int = 50,
    radius: float = 1e-2,
    tick: Callable[[], None] = lambda: None,
) -> LowerBound:
    """Best ratio ``||f(x) - f(y)|| / ||x - y||`` found near ``images`` (N x C x H x W in [0, 1]).

    Deterministic for a seeded ``generator`` (random draws are made on its device).  Uses
    ``torch.autograd.grad`` with respect to the inputs only: parameters' ``.grad`` are never
    touched, and the model is evaluated in eval mode through a copy when it is a module.
    ``tick`` is called at every step of both searches; it may raise to stop them (the
    engine's time budget does).
    """
    if images.dim() != 4 or not images.is_floating_point() or images.shape[0] == 0:
        raise EvaluationError(
            f"expected a float batch N x C x H x W of images, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if radius <= 0 or power_steps < 1 or ascent_steps < 0:
        raise EvaluationError(
            f"radius must be > 0, power_steps >= 1 and ascent_steps >= 0; got {radius}, "
            f"{power_steps}, {ascent_steps}"
        )
    f, dtype, how = _evaluator(model, images)
    x0 = images.detach().to(dtype).clamp(0, 1)
    allowance = _ROUNDING.get(dtype, 1e-2)
    with torch.no_grad():
        f_x0 = f(x0)
    direction, sigma = _power_iteration(f, x0, generator, power_steps, tick)

    # The pair distance: r, raised in reduced precision until rounding is negligible.
    out_norm = _norms(f_x0)
    r = torch.full_like(sigma, radius)
    if allowance:
        needed = _SIGNAL_TO_ROUNDING * allowance * 2 * out_norm / sigma.clamp_min(1e-12)
        r = torch.maximum(r, needed)
    # Move x inside the box by at most r max|v| per pixel: x + r v then needs no clipping.
    margin = (r * direction.flatten(1).abs().amax(dim=1)).clamp(max=0.5)
    anchor = torch.maximum(torch.minimum(x0, 1 - _expand(margin, x0)), _expand(margin, x0))
    with torch.no_grad():
        f_anchor = f(anchor)
    start = (anchor + _expand(r, x0) * direction).clamp(0, 1) - anchor
    best = _Best(anchor, f_anchor, allowance)
    best.offer(start, f, "power iteration")
    delta = start
    for step in range(ascent_steps):
        tick()
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            out = f(anchor + delta)
            gap = _norms(out - f_anchor)
            size = _norms(delta)
            objective = (torch.log(gap.clamp_min(1e-30)) - torch.log(size.clamp_min(1e-30))).sum()
            (grad,) = torch.autograd.grad(objective, delta)
        best.record(delta.detach(), out.detach(), "gradient ascent")
        # Normalised steps, shrinking from r/2 to r/20 (cosine), then back onto the sphere
        # of radius r and into the box.
        lr = 0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * step / max(1, ascent_steps)))
        g = grad / _expand(_norms(grad).clamp_min(1e-30), grad)
        moved = delta.detach() + _expand(lr * r, grad) * g
        moved = moved * _expand(r / _norms(moved).clamp_min(1e-30), moved)
        delta = (anchor + moved).clamp(0, 1) - anchor
    if ascent_steps:
        best.offer(delta.detach(), f, "gradient ascent")

    value, x, y, found_by = best.result(f)
    method = (
        f"best of power iteration on J^T J ({power_steps} steps) and gradient ascent on the "
        f"ratio ({ascent_steps} steps) near {images.shape[0]} image(s); pair found by "
        f"{found_by}, {float((x - y).norm()):.3g} apart (L2); {how}"
    )
    return LowerBound(value=value, x=x, y=y, method=method)


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _evaluator(
    model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype, str]:
    """A float64 evaluation of ``model`` when one is possible, else ``model`` itself."""
    probe = images[:1].detach().clamp(0, 1)
    if isinstance(model, nn.Module):
        training = [
            type(m).__name__
            for m in model.modules()
            if m.training and isinstance(m, (_BatchNorm, nn.modules.dropout._DropoutNd))
        ]
        if training:
            # Running it would update BatchNorm statistics or drop units at random.
            raise EvaluationError(
                f"the model is in training mode ({training[0]}): call eval() first"
            )
        try:
            with warnings.catch_warnings():
                # .double() on a TorchScript copy reads .grad of non-leaf parameters.
                warnings.simplefilter("ignore", UserWarning)
                twin = copy.deepcopy(model).double().eval()
            with torch.no_grad():
                got = twin(probe.double())
                ref = model(probe.to(images.dtype))
            if _faithful(got, ref):
                return twin, torch.float64, "float64 copy of the model"
        except Exception:  # the copy is an optimisation; fall back to the model as it is
            pass
    else:
        try:
            with torch.no_grad():
                got = model(probe.double())
            if got.dtype == torch.float64:
                return model, torch.float64, "model evaluated in float64"
        except Exception:  # the model only runs in its own precision
            pass
    dtype = images.dtype
    precision = str(dtype).removeprefix("torch.")
    return model, dtype, f"model evaluated in {precision}, a rounding allowance subtracted"


def _faithful(got: torch.Tensor, ref: torch.Tensor) -> bool:
    if not isinstance(got, torch.Tensor) or got.dtype != torch.float64 or got.shape != ref.shape:
        return False
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return bool(torch.allclose(got, ref.to(got.dtype), rtol=1e-3, atol=1e-3 * max(scale, 1e-6)))


def _power_iteration(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    generator: torch.Generator,
    steps: int,
    tick: Callable[[], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top right singular vector of the Jacobian at each image, and ``||J v||`` for it."""
    v = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    v = v.to(x.device)
    v = v / _expand(_norms(v), v)
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = f(xg)
        u = torch.zeros_like(out, requires_grad=True)
        (jt_u,) = torch.autograd.grad(out, xg, u, create_graph=True)  # J^T u, linear in u
        exact_jv = True
        for _ in range(steps):
            tick()
            jv = _jvp(f, xg, out, jt_u, u, v, exact_jv)
            if jv is None:  # no double backward through this model: finite differences
                exact_jv = False
                jv = _jvp(f, xg, out, jt_u, u, v, exact_jv)
            sigma = _norms(jv).detach()
            (w,) = torch.autograd.grad(out, xg, jv, retain_graph=True)  # J^T J v
            w = w.detach()
            w_norm = _norms(w)
            if not bool((w_norm > 0).all()):
                break
            v = w / _expand(w_norm, w)
    return v.detach(), sigma


def _jvp(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    out: torch.Tensor,
    jt_u: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    exact: bool,
) -> torch.Tensor | None:
    """``J v``: exactly by double backward (``d/du <J^T u, v>``), else by a difference."""
    if exact:
        try:
            (jv,) = torch.autograd.grad(jt_u, u, v, retain_graph=True)
            return jv.detach()
        except RuntimeError:
            return None
    # Only the direction of the power iteration uses this: an approximation is enough.
    h = 1e-3 if x.dtype == torch.float64 else 1e-2
    with torch.no_grad():
        return (f(x.detach() + h * v) - out.detach()) / h


class _Best:
    """The best pair so far (per batch, across both searches), measured on real inputs."""

    def __init__(self, anchor: torch.Tensor, f_anchor: torch.Tensor, allowance: float) -> None:
        self.anchor = anchor
        self.f_anchor = f_anchor
        self.allowance = allowance
        self.value = -math.inf
        self.pair: tuple[int, torch.Tensor] | None = None
        self.found_by = ""

    def _ratios(self, delta: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        gap = _norms(out - self.f_anchor)
        slack = self.allowance * (_norms(out) + _norms(self.f_anchor))
        size = _norms(delta)
        ratios = (gap - slack).clamp_min(0) / size
        return torch.where(size > 0, ratios, torch.zeros_like(ratios))

    def record(self, delta: torch.Tensor, out: torch.Tensor, how: str) -> None:
        ratios = self._ratios(delta, out)
        i = int(torch.argmax(ratios))
        if float(ratios[i]) > self.value:
            self.value = float(ratios[i])
            self.pair = (i, delta[i].detach().clone())
            self.found_by = how

    def offer(self, delta: torch.Tensor, f: Callable, how: str) -> None:
        with torch.no_grad():
            out = f(self.anchor + delta)
        self.record(delta, out, how)

    def result(self, f: Callable) -> tuple[float, torch.Tensor, torch.Tensor, str]:
        if self.pair is None:
            raise EvaluationError("the Lipschitz search found no pair of distinct inputs")
        i, delta = self.pair
        x = self.anchor[i : i + 1].detach().clone()
        y = (x + delta[None]).clamp(0, 1)
        # Measure the returned pair once more, exactly as a caller would.
        with torch.no_grad():
            fx, fy = f(x), f(y)
        gap = float((fy - fx).norm())
        slack = self.allowance * (float(fx.norm()) + float(fy.norm()))
        dist = float((y - x).norm())
        value = max(0.0, gap - slack) / dist if dist > 0 else 0.0
        return value, x, y, self.found_by

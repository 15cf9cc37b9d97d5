"""A claim's wall-clock budget, checked cooperatively by the engine.

Nothing is interrupted from outside (a thread or a signal could stop the model mid-kernel
and leave the device or a library in a bad state).  Instead the engine checks the budget
at natural points: every batch, every forward pass an attack or a certifier makes, every
step of the native attack loops and of the Lipschitz search.  Past the deadline it raises
:class:`~audit.errors.ClaimTimeout` carrying how far the claim got.

Torch-free, like the settings it reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from audit.errors import ClaimTimeout

if TYPE_CHECKING:
    from audit.config import Settings


class TimedClaim(Protocol):
    """A claim's own budget (:class:`audit.claims.base.ClaimSpec` is one)."""

    @property
    def timeout(self) -> float | None: ...


def claim_budget(spec: TimedClaim, settings: Settings) -> tuple[float | None, str]:
    """Seconds the claim may run, and where that number comes from; the claim's own
    ``timeout`` wins over the ``claim_timeout`` setting."""
    if spec.timeout is not None:
        return spec.timeout, f"timeout = {spec.timeout:g} in the claim"
    seconds = settings.claim_timeout
    if seconds is not None:
        return seconds, f"the claim_timeout setting ({seconds:g} s)"
    return None, ""


def _scalars(params: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-ready scalar parameters of an evaluation (nested tables are left out)."""
    return {k: v for k, v in params.items() if isinstance(v, str | int | float | bool)}


class Budget:
    """One claim's deadline, and a running account of what its evaluations have done."""

    def __init__(
        self, seconds: float, source: str, *, passes: Callable[[], int] = lambda: 0
    ) -> None:
        self.seconds = seconds
        self.source = source
        #: forward passes the claim has made so far
        self.passes = passes
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        #: evaluations in progress, outermost first: (name, scalar parameters)
        self.running: list[tuple[str, dict[str, Any]]] = []
        #: evaluations this claim finished (their results are cached and kept)
        self.completed: list[str] = []
        self.images_done: int | None = None
        self.images_total: int | None = None
        self.step: tuple[int, int] | None = None

    # -- the account --------------------------------------------------------------------
    def enter(self, name: str, params: Mapping[str, Any]) -> None:
        self.running.append((name, _scalars(params)))
        self.step = None

    def leave(self, *, done: bool) -> None:
        name, _ = self.running.pop()
        if done:
            self.completed.append(name)

    def at_batch(self, images_done: int, images_total: int) -> None:
        self.images_done, self.images_total = images_done, images_total
        self.step = None

    def at_step(self, done: int, total: int) -> None:
        self.step = (done, total)

    def progress(self) -> dict[str, Any]:
        """How far the claim got, JSON-ready (the record's ``evidence.partial``)."""
        out: dict[str, Any] = {
            "budget_s": self.seconds,
            "elapsed_s": round(time.monotonic() - self.start, 3),
        }
        if self.running:
            name, params = self.running[-1]
            out["evaluation"] = name
            out["params"] = params
            out["running"] = [n for n, _ in self.running]
        if self.images_total is not None:
            out["images_done"] = self.images_done
            out["images_total"] = self.images_total
        if self.step is not None:
            out["step"], out["steps"] = self.step
        out["forward_passes"] = self.passes()
        out["completed"] = list(self.completed)
        return out

    # -- the check ----------------------------------------------------------------------
    def check(self) -> None:
        now = time.monotonic()
        if now <= self.deadline:
            return
        progress = self.progress()
        where = ""
        if self.running:
            name, params = self.running[-1]
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            where = f" in evaluation {name!r}" + (f" ({shown})" if shown else "")
        got = []
        if self.images_total is not None:
            got.append(f"{self.images_done} of {self.images_total} images done")
        if self.step is not None:
            got.append(f"step {self.step[0]} of {self.step[1]} on the current batch")
        got.append(f"{self.passes()} forward passes")
        if self.completed:
            got.append(f"finished before: {', '.join(self.completed)}")
        raise ClaimTimeout(
            f"claim ran out of time: budget {self.seconds:g} s ({self.source}), stopped after "
            f"{now - self.start:.3g} s{where}; {'; '.join(got)}. The unfinished evaluation is "
            "not cached: a claim with a larger budget computes it afresh",
            budget_s=self.seconds,
            elapsed_s=now - self.start,
            progress=progress,
        )

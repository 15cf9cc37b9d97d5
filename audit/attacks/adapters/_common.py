"""Helpers every adapter needs: reproducible global randomness, restart scoring, checks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

Model = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded from ``generator``, then restore it.

    Libraries draw random starts from the global RNG; forking it keeps runs reproducible for a
    seed without disturbing the caller's random state.  Only the RNGs of the CPU and of
    ``device`` are forked and seeded.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(device_type=device.type):
            torch.manual_seed(seed)
            yield


def check_counts(name: str, params: Mapping[str, Any]) -> None:
    for key in ("steps", "restarts"):
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"attack {name!r}: {key} must be a positive integer, got {value!r}")
    step = params.get("step_size")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)):
        raise ValueError(f"attack {name!r}: step_size must be a number, got {step!r}")

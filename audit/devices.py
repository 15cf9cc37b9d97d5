"""Devices: which one a run, an xdist worker or a torchrun rank uses, and its memory errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from audit.errors import ConfigError, OutOfDeviceMemory

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but is not available here", key="device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) exist",
                key="device",
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("MPS was requested but is not available here", key="device")
    return device


def worker_device(device: torch.device, worker: str | None) -> torch.device:
    """The device of a pytest-xdist worker (``worker`` is its id, ``gw3``): a CUDA device
    given without an index goes to GPU ``N mod count`` for worker ``gwN``, so ``-n`` workers
    spread over the visible GPUs instead of all sharing the first; anything else is kept."""
    if device.type != "cuda" or device.index is not None or not worker:
        return device
    digits = worker.removeprefix("gw")
    count = torch.cuda.device_count()
    if not digits.isdigit() or count < 2:
        return device
    return torch.device("cuda", int(digits) % count)


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of a torchrun rank: a CUDA device given without an index goes to the
    rank's ``LOCAL_RANK`` (among the GPUs ``CUDA_VISIBLE_DEVICES`` leaves visible, modulo
    their count); anything else is kept."""
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def device_memory_errors(compute: Callable[[], T]) -> T:
    """``compute()``, with the device's out-of-memory errors (CUDA's own class, the model's
    :class:`OutOfDeviceMemory`, other backends' RuntimeError) as :class:`MemoryError`,
    which the engine retries with smaller batches."""
    try:
        return compute()
    except (torch.cuda.OutOfMemoryError, OutOfDeviceMemory) as exc:
        raise MemoryError(str(exc)) from exc
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise MemoryError(str(exc)) from exc
        raise

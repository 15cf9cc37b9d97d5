"""torchrun data-parallel audits: the ranks, their shards, and the exchange of shard results.

Under ``torchrun`` every rank runs the whole pytest session, claim for claim in the same
order.  Each evaluation is computed by every rank over its own contiguous run of the
engine's batches (:func:`split_batches`: no padding, no sample twice), and the ranks then
swap their shard results (:meth:`Ranks.exchange`) and merge them in rank order with the
result class's merge (:func:`register_merge`): concatenated per-image state, summed
counters, the report's examples picked again from the union.  Every rank then holds the
result a single process would have computed, so every rank reaches the same verdict;
rank 0 alone writes what the run leaves behind.

What travels between ranks is the evaluation store's codec (:mod:`audit.store`): a JSON
tree of registered result classes and a dictionary of tensors, read back with
``weights_only=True``.  An exchange carries the evaluation's key, so ranks that reached
different evaluations fail with both named rather than merging the wrong shards; a rank's
failure travels as its exception's type and message, and every rank raises it.  A rank that
dies outright is seen by the others as a failed collective (gloo notices the closed
connection; otherwise the group's timeout ends the wait).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from audit import errors, store
from audit.config import Settings
from audit.devices import rank_device, resolve_device
from audit.errors import (
    ClaimTimeout,
    ConfigError,
    EvaluationError,
    InvalidRecord,
    RankError,
    SegAuditError,
)

#: seconds a collective may wait for the other ranks before the run fails (``SEGAUDIT_
#: DIST_TIMEOUT`` overrides): an exchange waits while the slowest rank finishes its shard,
#: so it must exceed the longest imbalance of one evaluation, not a network round trip
DEFAULT_TIMEOUT_S = 1800.0

_MERGES: dict[type, Callable[[Sequence[Any], Any], Any]] = {}


def register_merge(cls: type, merge: Callable[[Sequence[Any], Any], Any]) -> None:
    """How shard results of class ``cls`` combine: ``merge(parts, engine)`` gets the ranks'
    results in rank order (ranks with an empty shard left out) and returns the whole."""
    _MERGES[cls] = merge


def merge_shards(parts: Sequence[Any], engine: Any) -> Any:
    """The ranks' shard results (rank order) as one; a list of results merges item by item."""
    first = parts[0]
    if isinstance(first, list):
        return [merge_shards(items, engine) for items in zip(*parts, strict=True)]
    merge = _MERGES.get(type(first))
    if merge is None:
        raise TypeError(f"no shard merge for {type(first).__name__} (register_merge)")
    return merge(parts, engine) if len(parts) > 1 else first


def split_batches(sizes: Sequence[int], world_size: int) -> list[range]:
    """Contiguous runs of batches, one per rank, as even in images as batch boundaries allow.

    Rank ``r`` starts at the batch boundary nearest to ``r * N / world_size`` images (the
    lower one on a tie); a rank may get nothing when there are fewer batches than ranks, but
    rank 0 always gets the first batch: it writes the record, which says what the model's
    output looked like, learnt on its first forward pass.
    """
    before = [0]
    for size in sizes:
        before.append(before[-1] + size)
    total = before[-1]
    starts = [0]
    for rank in range(1, world_size):
        target = rank * total / world_size
        first = max(starts[-1], min(1, len(sizes)))
        best = min(range(first, len(before)), key=lambda j: (abs(before[j] - target), j))
        starts.append(best)
    starts.append(len(sizes))
    return [range(starts[r], starts[r + 1]) for r in range(world_size)]


def _timeout() -> float:
    raw = os.environ.get("SEGAUDIT_DIST_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(
            f"SEGAUDIT_DIST_TIMEOUT must be a number of seconds, got {raw!r}"
        ) from None


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks (torchrun's ``WORLD_SIZE`` above 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def join_torchrun(settings: Settings, *, xdist: bool = False) -> tuple[Ranks | None, Settings]:
    """This process's rank when torchrun started several (None when alone), and the
    settings it runs with: on every rank but 0, a private report folder (removed by
    :meth:`Ranks.leave`), no CTRF file and no progress display, so that rank 0 alone
    writes the run's record, evidence, report and cache.  ``xdist``: this process is a
    pytest-xdist worker (or controller), which torchrun cannot also split."""
    if not launched_by_torchrun():
        return None, settings
    if xdist:
        raise ConfigError(
            "pytest-xdist (-n) and torchrun split the same work two ways: use one of them"
        )
    device = rank_device(resolve_device(settings.device), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ranks = Ranks.join(device)
    if ranks.rank == 0:
        return ranks, settings
    ranks.scratch = Path(tempfile.mkdtemp(prefix=f"segaudit-rank{ranks.rank}-"))
    return ranks, replace(settings, report_dir=ranks.scratch, ctrf=None, progress="off")


@dataclass
class Ranks:
    """This process's place in a torchrun job, and the collectives the audit uses."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout_s: float
    #: set once ranks reached different exchanges: no collective can be trusted after that
    broken: str | None = None
    #: the private report folder of a rank other than 0 (:func:`join_torchrun`)
    scratch: Path | None = None

    @classmethod
    def join(cls, device: torch.device) -> Ranks:
        """Join the job torchrun started (``env://``): NCCL for CUDA tensors beside gloo,
        gloo alone on CPU; the exchanges move host bytes, so they always go through gloo."""
        timeout = _timeout()
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
            except Exception as exc:
                raise RankError(
                    f"cannot join the torchrun job (RANK={os.environ.get('RANK')}, "
                    f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}, MASTER_ADDR="
                    f"{os.environ.get('MASTER_ADDR')}): {type(exc).__name__}: {exc}"
                ) from exc
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=backend,
            timeout_s=timeout,
        )

    def leave(self, *, wait: bool = True) -> None:
        """Leave the job, once every rank got here (``wait``): torchrun stops the other
        ranks as soon as one exits with a failure (a failed claim), which must not cut rank
        0 off while it writes the report.  Then the process group, and this rank's scratch
        folder.  An interrupted run does not wait: a rank stuck elsewhere would hold it."""
        if wait and self.broken is None:
            with contextlib.suppress(RankError):
                self.agree("to finish", None)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- bytes between ranks ------------------------------------------------------------
    def _check(self) -> None:
        if self.broken is not None:
            raise RankError(self.broken)

    def all_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's ``payload``, in rank order."""
        self._check()
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else None
        size = torch.tensor([len(payload)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        self._collective(lambda: dist.all_gather(sizes, size))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        if data is not None:
            padded[: len(payload)] = data
        gathered = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world_size)]
        self._collective(lambda: dist.all_gather(gathered, padded))
        return [bytes(g[: int(s)].numpy()) for g, s in zip(gathered, sizes, strict=True)]

    def rank0_bytes(self, payload: bytes) -> bytes:
        """Rank 0's ``payload`` on every rank (the others' ``payload`` is ignored)."""
        self._check()
        size = torch.tensor([len(payload) if self.rank == 0 else 0], dtype=torch.int64)
        self._collective(lambda: dist.broadcast(size, src=0))
        data = torch.zeros(int(size), dtype=torch.uint8)
        if self.rank == 0 and payload:
            data[:] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if int(size):
            self._collective(lambda: dist.broadcast(data, src=0))
        return bytes(data.numpy())

    def _collective(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            self.broken = (
                f"rank {self.rank}: a collective with the other {self.world_size - 1} rank(s) "
                f"failed ({type(exc).__name__}: {exc}); another rank probably died or took "
                f"longer than the {self.timeout_s:g} s timeout (SEGAUDIT_DIST_TIMEOUT)"
            )
            raise RankError(self.broken) from exc

    # -- results between ranks ----------------------------------------------------------
    def exchange(self, key: str, outcome: Outcome) -> list[Outcome]:
        """Every rank's outcome of the evaluation ``key``; :class:`RankError` (and the group
        marked broken) when the ranks were not all at ``key``."""
        try:
            payload = outcome.to_bytes(key)
        except Exception as exc:  # a result the codec cannot carry: the others must hear it
            payload = Outcome.failed(exc).to_bytes(key)
        replies = [Outcome.from_bytes(b) for b in self.all_bytes(payload)]
        keys = {r.key for r in replies}
        if len(keys) > 1:
            where = "; ".join(f"rank {i} at {r.key}" for i, r in enumerate(replies))
            self.broken = f"the ranks diverged ({where}): their results cannot be merged"
            raise RankError(self.broken)
        return replies

    def agree(self, what: str, problem: str | None) -> None:
        """Every rank's ``problem`` (None: fine) with ``what``: raise the first one on all."""
        replies = self.all_bytes((problem or "").encode())
        for rank, reply in enumerate(replies):
            if reply:
                if rank == self.rank:
                    return  # the caller raises its own, with its traceback
                raise RankError(f"rank {rank} of {self.world_size} failed {what}: {reply.decode()}")


@dataclass
class Outcome:
    """One rank's result of one evaluation: ``ok`` (``value``), ``empty`` (no batches in its
    shard), ``memory`` (out of device memory: every rank retries with smaller batches), or
    ``error`` (``error``: the exception's type, message and details)."""

    status: str
    value: Any = None
    error: Mapping[str, Any] | None = None
    key: str = ""
    #: the exception itself, on the rank that raised it (never sent)
    raised: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def failed(cls, exc: BaseException) -> Outcome:
        details: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, ClaimTimeout):
            details.update(
                budget_s=exc.budget_s, elapsed_s=exc.elapsed_s, progress=dict(exc.progress)
            )
        return cls("error", error=details, raised=exc)

    def to_bytes(self, key: str) -> bytes:
        tree, tensors = store.encode(self.value) if self.status == "ok" else (None, {})
        header = {"status": self.status, "error": self.error, "key": key, "tree": tree}
        buffer = io.BytesIO()
        torch.save({"header": json.dumps(header, default=str), "tensors": tensors}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Outcome:
        entry = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        header = json.loads(entry["header"])
        value = None
        if header["status"] == "ok":
            value = store.decode(header["tree"], entry["tensors"])
        return cls(header["status"], value, header["error"], header["key"])

    def exception(self, rank: int, shard: str) -> Exception:
        """The failure as an exception on another rank, its type kept where it matters
        (a timeout, a radius out of range, an error that fails one claim only)."""
        assert self.error is not None
        name, message = str(self.error["type"]), str(self.error["message"])
        where = f"on rank {rank} ({shard}): {message}"
        if name == "ClaimTimeout":
            return ClaimTimeout(
                where,
                budget_s=float(self.error.get("budget_s", 0.0)),
                elapsed_s=float(self.error.get("elapsed_s", 0.0)),
                progress=dict(self.error.get("progress") or {}),
            )
        cls = getattr(errors, name, None)
        # the audit's own errors keep their type (a ConfigError stays a usage problem, an
        # AttackUnavailable fails one claim); anything else is an evaluation that failed
        if isinstance(cls, type) and issubclass(cls, SegAuditError) and cls is not InvalidRecord:
            return cls(where)
        return EvaluationError(f"{name} {where}")

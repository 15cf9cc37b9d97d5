"""Turn an exception raised inside the audited model into a sentence a user can act on.

A model that fails in ``forward`` fails with torch's own words: an export guard
(``Guard failed: x.size()[0] == 1``), a channel mismatch deep in a TorchScript traceback,
an out-of-memory error.  Those are facts about the model and the audit's settings, not
bugs in SegAudit, so they become a :class:`~audit.errors.ModelError` that names the model,
the input it was given, torch's own message and the likely fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from audit.errors import ModelError, OutOfDeviceMemory

# torch.export's checks name the input's dimension and the value it was captured with,
# in one of two wordings depending on how the program was unlifted.
_GUARDS = (
    re.compile(r"Guard failed: \w+\.size\(\)\[(\d)\] == (\d+)"),
    re.compile(r"Expected input at \S+\.shape\[(\d)\] to be equal to (\d+)"),
)
_CHANNELS = re.compile(r"to have (\d+) channels, but got (\d+) channels")


def model_failure(name: str, shape: Sequence[int], exc: BaseException) -> ModelError:
    """A :class:`ModelError` explaining why model ``name`` failed on a batch of ``shape``.

    The cause comes first, because the first line becomes pytest's short summary.
    """
    detail = f"{type(exc).__name__}: {_last_line(exc)}"
    shown = "x".join(map(str, shape))
    cause = _cause(_last_line(exc), tuple(shape))
    if cause:
        # out of memory keeps its own type: the engine retries it with smaller batches
        kind = OutOfDeviceMemory if "out of memory" in detail.lower() else ModelError
        return kind(f"model {name!r} {cause} (torch: {detail}; input batch {shown})")
    return ModelError(
        f"model {name!r} failed on a batch of shape {shown} (N x C x H x W, values in [0, 1]): "
        f"{detail}"
    )


def _last_line(exc: BaseException) -> str:
    # TorchScript prefixes the real error with both of its tracebacks; the cause is last.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    last = lines[-1]
    for prefix in ("RuntimeError: ", "AssertionError: "):
        if last.startswith(prefix):
            last = last[len(prefix) :]
    return last


def _cause(detail: str, shape: tuple[int, ...]) -> str:
    """The likely cause and its fix, as the rest of a sentence starting "model X"."""
    guard = next((m for m in (g.search(detail) for g in _GUARDS) if m), None)
    if guard:
        dim, value = int(guard[1]), guard[2]
        if dim == 0:
            return (
                f"was exported with a static batch size of {value}: re-export it with a "
                "dynamic batch dimension (dynamic_shapes with torch.export.Dim) or pass "
                f"--audit-batch-size {value}"
            )
        if dim == 1:
            return f"was exported for {value} input channels, but SegAudit feeds RGB images"
        side = "height" if dim == 2 else "width"
        return (
            f"was exported for a fixed input {side} of {value}: re-export it with dynamic "
            "height and width, or resize the data to the exported size (size=HxW in "
            "--audit-data)"
        )
    channels = _CHANNELS.search(detail)
    if channels:
        return (
            f"expects {channels[1]} input channels, but SegAudit feeds RGB images with "
            f"{channels[2]}: wrap the model so that it takes N x 3 x H x W images in [0, 1]"
        )
    if "out of memory" in detail.lower():
        batch = shape[0] if shape else "?"
        return (
            f"ran out of memory on a batch of {batch} images: lower --audit-batch-size or "
            "use a device with more memory"
        )
    return ""

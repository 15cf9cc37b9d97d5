"""Proof that an evaluation left the audited model as it found it.

Attacks and attack libraries call the model with gradients on; a library that switches its
mode, writes ``.data`` or lets BatchNorm update its statistics would change what the rest of
the audit measures.  :class:`ModelGuard` snapshots the model before an evaluation and
compares after, cheaply enough to run around every one.
"""

from __future__ import annotations

import torch

from audit.errors import EvaluationError

#: words summed per chunk in :func:`_digests`: bounds its temporary device memory to about
#: 50 bytes a word (100 MiB), at a handful of kernel launches per chunk
_DIGEST_CHUNK = 1 << 21


def _digests(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Two position-weighted sums of each tensor's raw words, computed where it lives.

    Any change of any bit changes them (barring a deliberate collision).  Tensors are
    concatenated in chunks and summed per segment (prefix sums), so a network of hundreds of small
    tensors costs a handful of kernel launches and one transfer per chunk, not thousands:
    hashing weights on the host, or one reduction per tensor, would cost more than a short
    attack.  Integer sums wrap around exactly, so the result does not depend on order.
    """
    out: list[tuple[int, int]] = [(0, 0)] * len(tensors)
    groups: dict[tuple[torch.device, bool], list[tuple[int, torch.Tensor]]] = {}
    for i, tensor in enumerate(tensors):
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        wide = flat.element_size() % 4 == 0
        words = flat.view(torch.int32) if wide else flat.view(torch.uint8)
        groups.setdefault((flat.device, wide), []).append((i, words))
    for (device, _), members in groups.items():
        chunk: list[tuple[int, torch.Tensor]] = []
        size = 0
        for member in [*members, None]:
            if member is not None and (not chunk or size + member[1].numel() <= _DIGEST_CHUNK):
                chunk.append(member)
                size += member[1].numel()
                continue
            sizes = torch.tensor([w.numel() for _, w in chunk], device=device)
            segment = torch.repeat_interleave(
                torch.arange(len(chunk), device=device), sizes, output_size=size
            )
            starts = torch.cumsum(sizes, 0) - sizes
            position = torch.arange(size, device=device) - starts[segment] + 1
            words = torch.cat([w for _, w in chunk]).to(torch.int64)
            # Segment sums as differences of prefix sums: scatter-adds (index_add_) of
            # millions of words into a few slots serialise on atomics and cost milliseconds.
            prefix = torch.zeros(2, size + 1, dtype=torch.int64, device=device)
            torch.cumsum(words, 0, out=prefix[0, 1:])
            torch.cumsum(words * position, 0, out=prefix[1, 1:])
            ends = starts + sizes
            totals = prefix[:, ends] - prefix[:, starts]
            for (i, _), a, b in zip(chunk, *totals.cpu().tolist(), strict=True):
                out[i] = (a, b)
            if member is not None:
                chunk, size = [member], member[1].numel()
    return out


class ModelGuard:
    """Proves an attack left the audited model as it found it, cheaply enough for every run.

    Every parameter and buffer is identified by object and storage and summarised by
    :func:`_digests` (``param.data.add_`` and BatchNorm's running statistics change values
    without bumping autograd's version counter, so values are what is compared); ``.grad``
    is recorded the same way, and every ``training`` and ``requires_grad`` flag.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.state = self._state()

    def _state(self) -> dict[str, tuple]:
        params = list(self.module.named_parameters())
        buffers = list(self.module.named_buffers())
        grads = [(n, p.grad) for n, p in params if p.grad is not None]
        digests = iter(_digests([t for _, t in params + buffers + grads]))
        state: dict[str, tuple] = {}
        for name, p in params:
            state[name] = (id(p), p.data_ptr(), p.requires_grad, next(digests))
        for name, b in buffers:
            state[name] = (id(b), b.data_ptr(), next(digests))
        for name, _ in params:
            state[f"grad:{name}"] = (None,)
        for name, grad in grads:
            state[f"grad:{name}"] = (id(grad), next(digests))
        for name, sub in self.module.named_modules():
            state[f"training:{name or '<root>'}"] = (sub.training,)
        return state

    def changes(self) -> list[str]:
        """Names of parameters, buffers and flags that differ from the snapshot."""
        now = self._state()
        return sorted(k for k in set(now) | set(self.state) if now.get(k) != self.state.get(k))

    def check(self, attack: str) -> None:
        changed = self.changes()
        if changed:
            raise EvaluationError(
                f"attack {attack!r} changed the audited model ({', '.join(changed[:5])}"
                f"{', ...' if len(changed) > 5 else ''}); its results are discarded"
            )

"""Checks on a model's logits that turn silent nonsense into errors naming the culprit."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audit.errors import EvaluationError, ModelError

# How many class names / samples an error message lists before "...".
_SHOWN = 5


def check_num_classes(
    logits: torch.Tensor,
    expected: int,
    *,
    model_name: str,
    dataset_name: str,
    class_names: Sequence[str] | None = None,
) -> None:
    """Raise ModelError when ``logits`` (N x K x H x W) do not have ``expected`` classes."""
    if logits.dim() < 2:
        raise ModelError(
            f"model {model_name!r} returned a tensor of shape {tuple(logits.shape)}; "
            "expected logits N x K x H x W"
        )
    got = logits.shape[1]
    if got == expected:
        return
    names = ""
    if class_names:
        shown = ", ".join(class_names[:_SHOWN])
        names = f" ({shown}{', ...' if len(class_names) > _SHOWN else ''})"
    raise ModelError(
        f"model {model_name!r} outputs {got} classes per pixel but dataset {dataset_name!r} "
        f"has {expected} classes{names}; audit the model on the dataset it was trained for"
    )


def all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """Whether every value is finite, as a 0-d bool tensor on the tensor's device (no
    read-back).  The extremes are finite exactly when every value is (both propagate NaN):
    two reductions instead of a mask of the whole tensor, a tenth of the cost on CPU."""
    if tensor.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=tensor.device)
    low, high = torch.aminmax(tensor.detach())
    return torch.isfinite(low) & torch.isfinite(high)


def check_finite(logits: torch.Tensor, sample_names: Sequence[str]) -> None:
    """Raise EvaluationError naming the samples whose logits contain NaN or Inf."""
    if len(sample_names) != logits.shape[0]:
        raise ValueError(f"{len(sample_names)} sample names for a batch of {logits.shape[0]}")
    if bool(all_finite(logits)):
        return
    finite = torch.isfinite(logits)
    # A pixel is bad when any of its class scores is NaN/Inf.
    bad_pixels = (~finite.reshape(finite.shape[0], finite.shape[1], -1).all(dim=1)).sum(dim=1)
    pixels = logits[0, 0].numel() if logits.dim() >= 3 else 1
    bad = [(name, int(n)) for name, n in zip(sample_names, bad_pixels.tolist(), strict=True) if n]
    listed = "; ".join(f"{name!r}: {n} of {pixels} pixels" for name, n in bad[:_SHOWN])
    more = f" (and {len(bad) - _SHOWN} more samples)" if len(bad) > _SHOWN else ""
    raise EvaluationError(
        f"model produced NaN or Inf logits for {len(bad)} sample(s): {listed}{more}; "
        "check the input normalisation (mean/std) and the model's numerical stability"
    )

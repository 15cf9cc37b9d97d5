"""One calling convention for every model: [0, 1] images in, full-resolution logits out.

Normalisation lives inside the wrapper so that attacks, noise and epsilons are expressed
in [0, 1] image space whatever the model expects.  The wrapper never changes the wrapped
model's parameters, buffers or ``requires_grad`` flags; the only state it touches is the
training flag, which it holds at ``eval()`` so BatchNorm statistics stay frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import EvaluationError, ModelError
from audit.model.metadata import ModelMetadata

# Keys that hold the logits in dict outputs: torchvision uses "out" (next to "aux"),
# Hugging Face ModelOutput uses "logits".
_LOGIT_KEYS = ("out", "logits")


class SegmentationWrapper(nn.Module):
    """Wrap ``model`` so that ``forward`` maps ``N x 3 x H x W`` in [0, 1] to ``N x K x H x W``.

    ``resized_output`` becomes ``True`` once a call had to upsample the model's output to
    the input size (models that predict at a fraction of the input resolution).
    """

    def __init__(
        self, model: nn.Module, metadata: ModelMetadata | None = None, *, name: str = "model"
    ) -> None:
        super().__init__()
        self.model = model
        self.metadata = metadata if metadata is not None else ModelMetadata()
        self.name = name
        self.resized_output = False
        mean = self.metadata.mean if self.metadata.mean is not None else (0.0, 0.0, 0.0)
        std = self.metadata.std if self.metadata.std is not None else (1.0, 1.0, 1.0)
        self.normalises = self.metadata.mean is not None or self.metadata.std is not None
        # Non-persistent: they follow .to(device) but stay out of state_dict().
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # Exported programs (torch.export) refuse train()/eval(): their mode was fixed when
        # they were captured, and the loader has already refused training-mode captures.
        self._mode_switchable = True
        self._hold_eval()

    def train(self, mode: bool = True) -> SegmentationWrapper:
        # Only the wrapper's own flag follows; the audited model always runs in eval mode.
        self.training = mode
        self._hold_eval()
        return self

    def _hold_eval(self) -> None:
        if not self._mode_switchable:
            return
        if not any(module.training for module in self.model.modules()):
            return
        try:
            self.model.eval()
        except NotImplementedError:
            self._mode_switchable = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise EvaluationError(
                f"model {self.name!r} expects float images N x 3 x H x W in [0, 1], got "
                f"{images.dtype} tensor of shape {tuple(images.shape)}"
            )
        # Someone may have called .train() on the inner model since the last call.
        self._hold_eval()
        x = images
        if self.normalises:
            x = (x - self.mean.to(x)) / self.std.to(x)
        logits = self._select_logits(self.model(x))
        self._check_logits(logits, images)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            self.resized_output = True
        return logits

    def _select_logits(self, output: Any, depth: int = 0) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return output
        if depth < 2 and isinstance(output, Mapping):
            for key in _LOGIT_KEYS:
                if key in output:
                    return self._select_logits(output[key], depth + 1)
            tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
            if len(tensors) == 1:
                return tensors[0]
            raise ModelError(
                f"model {self.name!r} returned a dict with keys {sorted(map(str, output))} "
                f"and no {' or '.join(map(repr, _LOGIT_KEYS))} entry, so SegAudit cannot "
                "tell which one holds the logits; return a tensor or a dict with an 'out' key"
            )
        if depth < 2 and isinstance(output, Sequence) and not isinstance(output, str):
            if not output:
                raise ModelError(f"model {self.name!r} returned an empty {type(output).__name__}")
            return self._select_logits(output[0], depth + 1)
        raise ModelError(
            f"model {self.name!r} returned {type(output).__name__}; expected a logits tensor "
            "N x K x H x W, a dict with an 'out' tensor, or a tuple whose first item is one"
        )

    def _check_logits(self, logits: torch.Tensor, images: torch.Tensor) -> None:
        if logits.dim() != 4:
            raise ModelError(
                f"model {self.name!r} returned a tensor of shape {tuple(logits.shape)} for "
                f"input {tuple(images.shape)}; expected 4-D logits N x K x H x W"
            )
        if logits.shape[0] != images.shape[0]:
            raise ModelError(
                f"model {self.name!r} returned {logits.shape[0]} outputs for a batch of "
                f"{images.shape[0]} images"
            )
        if not logits.is_floating_point():
            raise ModelError(
                f"model {self.name!r} returned {logits.dtype} values; expected float logits "
                "(per-class scores), not class indices"
            )

"""One calling convention for every model: [0, 1] images in, full-resolution logits out.

Normalisation lives inside the wrapper so that attacks, noise and epsilons are expressed
in [0, 1] image space whatever the model expects.  The wrapper never changes the wrapped
model's parameters, buffers or ``requires_grad`` flags; the only state it touches is the
training flag, which it holds at ``eval()`` so BatchNorm statistics stay frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import EvaluationError, ModelError, SegAuditError
from audit.model.failures import model_failure
from audit.model.metadata import ModelMetadata

# Keys that hold the logits in dict outputs: torchvision uses "out" (next to "aux"),
# Hugging Face ModelOutput uses "logits".
_LOGIT_KEYS = ("out", "logits")


@dataclass(frozen=True)
class OutputResolution:
    """The size of a model's logits for one input size, and how the wrapper resizes them."""

    input_size: tuple[int, int]
    output_size: tuple[int, int]

    @property
    def resized(self) -> bool:
        return self.input_size != self.output_size

    @property
    def factor(self) -> int | None:
        """``k`` when input = k x output on both sides (1: no resize), else ``None``."""
        (big_h, big_w), (h, w) = self.input_size, self.output_size
        if h < 1 or w < 1 or big_h % h or big_w % w or big_h // h != big_w // w:
            return None
        return big_h // h

    def refusal(self) -> str | None:
        """Why resizing these logits to the input would be a guess; ``None`` when it is an
        upsampling by a whole factor, as a network of stride k predicts."""
        (big_h, big_w), (h, w) = self.input_size, self.output_size
        if h > big_h or w > big_w:
            return (
                "they are larger than the input, and shrinking them would decide by "
                "interpolation which prediction each pixel gets"
            )
        if h * big_w != w * big_h:
            return (
                "their aspect ratio differs from the input's, so stretching them assumes a "
                "mapping of the model's grid onto the image that nothing states"
            )
        if self.factor is None:
            return (
                "the input is not a whole multiple of them, so no stride maps the model's "
                "grid onto the image's pixels"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        """For the record: sizes as [H, W]; ``resize_factor`` is ``k``, or [H/h, W/w] for a
        resize accepted through the metadata's ``accept_resize``."""
        (big_h, big_w), (h, w) = self.input_size, self.output_size
        factor: int | list[float] | None = self.factor
        if factor is None and h > 0 and w > 0:
            factor = [round(big_h / h, 4), round(big_w / w, 4)]
        return {
            "input_resolution": [big_h, big_w],
            "output_resolution": [h, w],
            "resize_factor": factor,
        }


class SegmentationWrapper(nn.Module):
    """Wrap ``model`` so that ``forward`` maps ``N x 3 x H x W`` in [0, 1] to ``N x K x H x W``.

    Logits smaller than the input by a whole factor k (input = k x output on both sides)
    are upsampled bilinearly; any other size is refused with a :class:`ModelError` unless
    the metadata sets ``accept_resize``.  ``output_resolution`` holds what the first call
    saw, and ``resized_output`` becomes ``True`` once a call had to resize.
    """

    def __init__(
        self, model: nn.Module, metadata: ModelMetadata | None = None, *, name: str = "model"
    ) -> None:
        super().__init__()
        self.model = model
        self.metadata = metadata if metadata is not None else ModelMetadata()
        self.name = name
        self.resized_output = False
        self.output_resolution: OutputResolution | None = None
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
        try:
            output = self.model(x)
        except SegAuditError:
            raise
        except Exception as exc:
            # torch's words for a model that cannot take this input (an export guard, a
            # channel mismatch): a fact about the model, reported as one, with the fix.
            raise model_failure(self.name, tuple(images.shape), exc) from exc
        logits = self._select_logits(output)
        self._check_logits(logits, images)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        in_h, in_w = images.shape[-2:]
        out_h, out_w = logits.shape[-2:]
        resolution = OutputResolution((int(in_h), int(in_w)), (int(out_h), int(out_w)))
        if resolution.resized:
            self._check_resize(resolution)
        if self.output_resolution is None:
            # After the check: the record shows only resizes that were made.
            self.output_resolution = resolution
        if resolution.resized:
            logits = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            self.resized_output = True
        return logits

    def _check_resize(self, resolution: OutputResolution) -> None:
        # A silent stretch of a 7x3 output over a 128x256 image scores a model that cannot
        # segment it at all; only a whole-factor upsampling is taken without being told.
        reason = resolution.refusal()
        if reason is None or self.metadata.accept_resize:
            return
        (big_h, big_w), (h, w) = resolution.input_size, resolution.output_size
        raise ModelError(
            f"model {self.name!r} returns {h}x{w} logits for a {big_h}x{big_w} input: "
            f"{reason}. SegAudit resizes logits only by a whole factor (input = k x output "
            "on both sides, k >= 1). If this model's output is meant to be resized to the "
            "input, set accept_resize = true in its metadata (--audit-metadata FILE, "
            "[tool.segaudit.metadata] in pyproject.toml, or the model's audit.json) and the "
            "record will show the resize; if the data size is the problem, resize the data "
            "(size=HxW in --audit-data) to a multiple of the model's stride"
        )

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

"""The clean evaluation: the model's predictions on unperturbed images, as additive state.

Per-image confusion matrices and counts of ground-truth objects per size bucket (both sum
over batches, shards and processes the same way) and a few examples for the report; every
clean metric is computed from them later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from audit import metrics, objects
from audit.errors import EvaluationError
from audit.evaluations.per_image import PerImage
from audit.metrics import predict

if TYPE_CHECKING:
    from audit.engine import Batch, Engine


@dataclass(frozen=True)
class Example:
    """One image kept for the report, as arrays ready to draw."""

    name: str
    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W int64 (ignore index kept)
    prediction: np.ndarray  # H x W int64
    pixel_accuracy: float


@dataclass(frozen=True)
class CleanEvaluation(PerImage):
    """Predictions on unperturbed images, reduced to additive state."""

    per_image: torch.Tensor  # N x K x K int64 confusion matrices
    sample_names: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]
    examples: tuple[Example, ...] = field(default=())
    #: N x 3 x 4 int64 counts of ground-truth objects per size bucket (audit.objects)
    object_sizes: torch.Tensor | None = None

    @property
    def confusion(self) -> torch.Tensor:
        return self.per_image.sum(0)

    @property
    def num_pixels(self) -> int:
        return int(self.per_image.sum())


def evaluate_clean(engine: Engine) -> CleanEvaluation:
    """Clean predictions over the engine's dataset slice, computed once per engine."""
    return engine.cached(
        engine.key_parts("clean"), lambda: _compute_clean(engine), log=True, sharded=True
    )


def _compute_clean(engine: Engine) -> CleanEvaluation:
    per_image: list[torch.Tensor] = []
    names: list[str] = []
    sizes: list[tuple[int, int]] = []
    examples: list[Example] = []
    object_sizes: list[torch.Tensor] = []
    with torch.inference_mode():
        for batch in engine.batches():
            pred = predict(engine.forward(batch.images, batch.names))
            cms = metrics.per_image_confusion(
                pred, batch.masks, engine.num_classes, engine.ignore_index
            ).cpu()
            per_image.append(cms)
            object_sizes.append(
                objects.object_counts(engine.objects(batch), pred, batch.masks).cpu()
            )
            names.extend(batch.names)
            sizes.extend([tuple(batch.images.shape[-2:])] * len(batch.names))
            for j in range(len(batch.names)):
                if len(examples) >= engine.max_examples:
                    break
                examples.append(_example(batch, j, pred[j], cms[j]))
    if not per_image:
        raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to evaluate")
    return CleanEvaluation(
        torch.cat(per_image),
        tuple(names),
        tuple(sizes),
        tuple(examples),
        object_sizes=torch.cat(object_sizes),
    )


def _example(batch: Batch, j: int, pred: torch.Tensor, cm: torch.Tensor) -> Example:
    image = (batch.images[j].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    total = int(cm.sum())
    accuracy = float(cm.diagonal().sum()) / total if total else float("nan")
    return Example(
        name=batch.names[j],
        image=image,
        mask=batch.masks[j].cpu().numpy(),
        prediction=pred.cpu().numpy(),
        pixel_accuracy=accuracy,
    )

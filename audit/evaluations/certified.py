"""Certification evaluations: Lipschitz certificates and randomized smoothing.

As for attacks, what is kept is additive per-image state (certified counts per radius,
confusion matrices of the smoothed classifier), computed once per key by the engine and
reduced by the claims.  Worst-case IoU is the exception the reference warns about: per-image
worst cases do not add up to a dataset bound, so the per-image ingredients are kept and the
dataset-level bound is solved at reduction time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit import metrics
from audit.certify import joint, margins
from audit.certify.smoothing import SmoothingConfig, smoothing_certify
from audit.errors import EvaluationError
from audit.evaluations.lipschitz import KAPPA, LipschitzSource, resolve_lipschitz
from audit.metrics import predict

if TYPE_CHECKING:
    from audit.engine import Engine

#: radii every Lipschitz certification covers, so the report's curves come from the same pass
DEFAULT_RADII: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(26))


@dataclass(frozen=True)
class CertifiedExample:
    name: str
    image: np.ndarray  # H x W x 3 uint8
    radius: np.ndarray  # H x W float32, certified radius per pixel
    correct: np.ndarray  # H x W bool (labelled and predicted right)
    labelled: np.ndarray  # H x W bool


@dataclass(frozen=True)
class LipschitzCertification:
    lipschitz: LipschitzSource
    radii: tuple[float, ...]
    pixel_accuracy: torch.Tensor  # N x E x 2: certified correct, labelled (joint budget)
    fraction: torch.Tensor  # N x E x 2: pixels individually certified, all pixels
    iou_state: Any  # audit.certify.joint.IoUProfile: per-image worst-case IoU ingredients
    iou_radii: tuple[float, ...]
    clean_pixel_accuracy: float
    resolutions: tuple[tuple[int, int], ...]
    forward_passes: int
    seconds: float
    examples: tuple[CertifiedExample, ...] = field(default=())

    @property
    def num_samples(self) -> int:
        return int(self.pixel_accuracy.shape[0])

    @property
    def resolution(self) -> tuple[int, int] | None:
        """The common input size, or ``None`` when images differ in size."""
        sizes = set(self.resolutions)
        return next(iter(sizes)) if len(sizes) == 1 else None

    def index(self, eps: float) -> int:
        for i, r in enumerate(self.radii):
            if math.isclose(r, eps, rel_tol=0, abs_tol=1e-12):
                return i
        raise KeyError(eps)


def certify_lipschitz(
    engine: Engine, source: Any, radii: Sequence[float]
) -> LipschitzCertification:
    """One forward pass per batch: per-pixel radii and joint-budget metrics at every radius."""
    lipschitz = resolve_lipschitz(engine, source)
    grid = tuple(sorted({*DEFAULT_RADII, *(float(r) for r in radii)}))
    iou_radii = tuple(sorted({float(r) for r in radii}))

    def compute() -> LipschitzCertification:
        with margins.full_float32():
            return _certify_pass()

    def _certify_pass() -> LipschitzCertification:
        start_passes, start = engine.forward_passes, time.perf_counter()
        pa, frac, iou_parts, examples = [], [], [], []
        sizes: list[tuple[int, int]] = []
        correct_total = labelled_total = 0
        eps = torch.tensor(grid, dtype=torch.float64, device=engine.device)
        iou_eps = torch.tensor(iou_radii, dtype=torch.float64, device=engine.device)
        with torch.no_grad():
            for batch in engine.batches():
                logits = engine.forward(batch.images, batch.names)
                pa.append(
                    joint.certified_pixel_accuracy_counts(
                        logits,
                        batch.masks,
                        lipschitz.value,
                        eps,
                        ignore_index=engine.ignore_index,
                        kappa=KAPPA,
                    ).cpu()
                )
                radius = margins.certified_radius(logits, lipschitz.value, kappa=KAPPA)
                counts = joint.certified_fraction_counts(logits, lipschitz.value, eps, kappa=KAPPA)
                frac.append(counts[..., [0, 2]].cpu())
                # Worst-case IoU ingredients grow with the budget: only the claimed radii.
                iou_parts.append(
                    joint.iou_profile(
                        logits,
                        batch.masks,
                        lipschitz.value,
                        iou_eps,
                        ignore_index=engine.ignore_index,
                        kappa=KAPPA,
                    )
                )
                iou_parts[-1] = _to_cpu(iou_parts[-1])
                sizes.extend([tuple(batch.images.shape[-2:])] * len(batch.names))
                labelled = batch.masks != engine.ignore_index
                correct = (predict(logits) == batch.masks) & labelled
                correct_total += int(correct.sum())
                labelled_total += int(labelled.sum())
                for j in range(len(batch.names)):
                    if len(examples) < engine.max_examples:
                        examples.append(
                            _certified_example(batch, j, radius[j], correct[j], labelled[j])
                        )
        if not pa:
            raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to certify")
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        return LipschitzCertification(
            lipschitz=lipschitz,
            radii=grid,
            pixel_accuracy=torch.cat(pa),
            fraction=torch.cat(frac),
            iou_state=joint.IoUProfile.cat(iou_parts),
            iou_radii=iou_radii,
            clean_pixel_accuracy=correct_total / labelled_total if labelled_total else math.nan,
            resolutions=tuple(sizes),
            forward_passes=engine.forward_passes - start_passes,
            seconds=time.perf_counter() - start,
            examples=tuple(examples),
        )

    parts = engine.key_parts(
        "certify_lipschitz",
        lipschitz=lipschitz.value,
        radii=list(grid),
        iou_radii=list(iou_radii),
        kappa=KAPPA,
    )
    return engine.cached(parts, compute, log=True, sharded=True)


def _to_cpu(profile: Any) -> Any:
    """A batch's IoU profile moved off the device: it is kept for the whole dataset."""
    return dataclasses.replace(
        profile,
        **{f.name: getattr(profile, f.name).cpu() for f in dataclasses.fields(profile)},
    )


def _certified_example(
    batch: Any, j: int, radius: torch.Tensor, correct, labelled
) -> CertifiedExample:
    image = (batch.images[j].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return CertifiedExample(
        name=batch.names[j],
        image=image.cpu().numpy(),
        radius=radius.float().cpu().numpy(),
        correct=correct.cpu().numpy(),
        labelled=labelled.cpu().numpy(),
    )


# -- randomized smoothing ---------------------------------------------------------------------
@dataclass(frozen=True)
class SmoothingCertification:
    config: Mapping[str, Any]
    radius: float
    per_image: torch.Tensor  # N x (K+1) x (K+1) confusion, abstention as class K
    abstained: torch.Tensor  # N
    pixels: torch.Tensor  # N
    forward_passes: int
    seconds: float

    @property
    def num_samples(self) -> int:
        return int(self.per_image.shape[0])


def certify_smoothing(engine: Engine, config: Mapping[str, Any]) -> SmoothingCertification:
    """Randomized smoothing (SegCertify) of every image, with fresh noise for each sample."""
    cfg = SmoothingConfig(**config)

    def compute() -> SmoothingCertification:
        start_passes, start = engine.forward_passes, time.perf_counter()
        k = engine.num_classes
        cms, abstained, pixels = [], [], []
        model = engine.attack_forward(lambda grad: None)
        for batch in engine.batches():
            cfg.validate(int(batch.masks[0].numel()))
            generator = engine.generator("smoothing", sorted(config.items()), batch.number)
            result = smoothing_certify(model, batch.images, cfg, generator=generator, num_classes=k)
            pred = torch.where(
                result.prediction < 0, torch.full_like(result.prediction, k), result.prediction
            )
            cms.append(
                metrics.per_image_confusion(pred, batch.masks, k + 1, engine.ignore_index).cpu()
            )
            abstained.append((result.prediction < 0).flatten(1).sum(1).cpu())
            pixels.append(torch.full((len(pred),), pred[0].numel()))
        if not cms:
            raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to certify")
        return SmoothingCertification(
            config=dict(config),
            radius=cfg.radius,
            per_image=torch.cat(cms),
            abstained=torch.cat(abstained),
            pixels=torch.cat(pixels),
            forward_passes=engine.forward_passes - start_passes,
            seconds=time.perf_counter() - start,
        )

    return engine.cached(
        engine.key_parts("certify_smoothing", **config), compute, log=True, sharded=True
    )


def smoothing_miou(cm: np.ndarray) -> Any:
    """mIoU over the real classes of a confusion matrix whose last class is "abstain":
    abstentions count as errors (false negatives of the true class)."""
    ious = metrics.class_iou(cm)[..., :-1]
    return metrics._nanmean(ious)

"""How each evaluation's shard results (one per torchrun rank, in rank order) add up to the
result one process computes over every image (:func:`audit.distributed.register_merge`).

Per-image state concatenates (the shards are contiguous runs of the batches, in order);
counters sum; the report's examples are picked again from the union the way one process
picks them (the first images, or the worst by the same key, earlier images first on a tie);
wall-clock seconds are the slowest rank's.  A merged result equals the single-process one
field for field, timings aside: tests/test_torchrun.py runs both and compares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from audit.certify.joint import IoUProfile
from audit.distributed import register_merge
from audit.evaluations.attack import AttackEvaluation, GradientHealth
from audit.evaluations.certified import LipschitzCertification, SmoothingCertification
from audit.evaluations.clean import CleanEvaluation
from audit.evaluations.corruption import CorruptionEvaluation
from audit.evaluations.min_norm import MinNormEvaluation
from audit.evaluations.soundness import SCATTER_POINTS, AttackCheck, SoundnessResult


def _cat(parts: Sequence[Any], name: str) -> Any:
    """Field ``name`` of every part, concatenated: tensors along images, tuples as tuples;
    ``None`` when every part has none."""
    values = [getattr(p, name) for p in parts]
    if all(v is None for v in values):
        return None
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return tuple(item for value in values for item in value)


def _sum(parts: Sequence[Any], name: str) -> Any:
    return sum(getattr(p, name) for p in parts)


def _slowest(parts: Sequence[Any]) -> float:
    return max(p.seconds for p in parts)


def _replace(first: Any, parts: Sequence[Any], cat: Sequence[str], **fields: Any) -> Any:
    """``first`` with fields ``cat`` concatenated over ``parts``, passes summed, the
    slowest rank's seconds, and ``fields``."""
    merged = {name: _cat(parts, name) for name in cat}
    if any(f.name == "forward_passes" for f in dataclasses.fields(first)):
        merged["forward_passes"] = _sum(parts, "forward_passes")
    if any(f.name == "seconds" for f in dataclasses.fields(first)):
        merged["seconds"] = _slowest(parts)
    return dataclasses.replace(first, **merged, **fields)


def merge_clean(parts: Sequence[CleanEvaluation], engine: Any) -> CleanEvaluation:
    return _replace(
        parts[0],
        parts,
        ("per_image", "sample_names", "resolutions", "object_sizes"),
        examples=_cat(parts, "examples")[: engine.max_examples],
    )


def worst_examples(parts: Sequence[Any], limit: int) -> tuple[Any, ...]:
    """The ``limit`` examples with the lowest accuracy under attack over every rank's.

    One process keeps the lowest, the earlier image on a tie; a stable sort of the ranks'
    picks (each rank's already in that order, the ranks in image order) keeps the same.
    """
    return tuple(sorted(_cat(parts, "examples"), key=lambda e: e.pixel_accuracy_adv)[:limit])


def merge_attack(parts: Sequence[AttackEvaluation], engine: Any) -> AttackEvaluation:
    health = GradientHealth(
        **{
            f.name: sum(getattr(p.gradients, f.name) for p in parts)
            for f in dataclasses.fields(GradientHealth)
        }
    )
    return _replace(
        parts[0],
        parts,
        (
            "per_image",
            "flipped",
            "clean_correct",
            "linf",
            "l2",
            "resolutions",
            "object_sizes",
            "winners",
        ),
        examples=worst_examples(parts, engine.attack_examples),
        gradients=health,
        backward_passes=_sum(parts, "backward_passes"),
    )


def merge_corruption(parts: Sequence[CorruptionEvaluation], engine: Any) -> CorruptionEvaluation:
    return _replace(parts[0], parts, ("per_image", "sample_names", "resolutions", "object_sizes"))


def merge_min_norm(parts: Sequence[MinNormEvaluation], engine: Any) -> MinNormEvaluation:
    return _replace(
        parts[0],
        parts,
        ("image_radius", "pixel_radius", "reached"),
        backward_passes=_sum(parts, "backward_passes"),
    )


def merge_lipschitz(parts: Sequence[LipschitzCertification], engine: Any) -> LipschitzCertification:
    # The clean pixel accuracy is a ratio of counts: each rank's counts come back exactly
    # from its ratio and its labelled pixels (both below 2**53), and sum.
    correct = labelled = 0
    for part in parts:
        count = int(part.pixel_accuracy[:, 0, 1].sum())
        if count:
            correct += round(part.clean_pixel_accuracy * count)
            labelled += count
    return _replace(
        parts[0],
        parts,
        ("pixel_accuracy", "fraction", "resolutions"),
        iou_state=IoUProfile.cat([p.iou_state for p in parts]),
        clean_pixel_accuracy=correct / labelled if labelled else float("nan"),
        examples=_cat(parts, "examples")[: engine.max_examples],
    )


def merge_smoothing(parts: Sequence[SmoothingCertification], engine: Any) -> SmoothingCertification:
    return _replace(parts[0], parts, ("per_image", "abstained", "pixels"))


def merge_soundness(parts: Sequence[SoundnessResult], engine: Any) -> SoundnessResult:
    checks = []
    for same in zip(*(p.checks for p in parts), strict=True):
        checks.append(
            AttackCheck(
                attack=same[0].attack,
                certified_pixels=sum(c.certified_pixels for c in same),
                flipped_certified=sum(c.flipped_certified for c in same),
                flipped_any=sum(c.flipped_any for c in same),
                metric_violations=sum(c.metric_violations for c in same),
                max_norm=max(c.max_norm for c in same),
                # a prefix of the batches' points, whichever rank drew them
                scatter=[point for c in same for point in c.scatter][:SCATTER_POINTS],
                tightness=[ratio for c in same for ratio in c.tightness],
                margin_use=[use for c in same for use in c.margin_use],
                margin_use_max=max(c.margin_use_max for c in same),
            )
        )
    # the first counterexample in image order, as one process finds it first
    found = next((p for p in parts if p.counterexample is not None), parts[0])
    return dataclasses.replace(
        parts[0],
        checks=tuple(checks),
        counterexample=found.counterexample,
        artifacts=found.artifacts,
        num_samples=_sum(parts, "num_samples"),
        seconds=_slowest(parts),
    )


for _cls, _merge in (
    (CleanEvaluation, merge_clean),
    (AttackEvaluation, merge_attack),
    (CorruptionEvaluation, merge_corruption),
    (MinNormEvaluation, merge_min_norm),
    (LipschitzCertification, merge_lipschitz),
    (SmoothingCertification, merge_smoothing),
    (SoundnessResult, merge_soundness),
):
    register_merge(_cls, _merge)

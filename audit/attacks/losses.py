"""Per-pixel losses for attacks on dense outputs; the ignore label never contributes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labelled(labels: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Boolean mask of pixels that carry a label."""
    if ignore_index is None:
        return torch.ones_like(labels, dtype=torch.bool)
    return labels != ignore_index


def pixel_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Cross-entropy per pixel, N x H x W, zero on ignored pixels."""
    mask = labelled(labels, ignore_index)
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    return F.cross_entropy(logits, safe, reduction="none") * mask


def per_image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each image's labelled pixels (N values); an image with none gives 0."""
    total = (values * mask).flatten(1).sum(1)
    count = mask.flatten(1).sum(1).clamp(min=1)
    return total / count


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Per-image mean pixel cross-entropy (N values): FGSM, BIM, PGD."""
    return per_image_mean(pixel_ce(logits, labels, ignore_index), labelled(labels, ignore_index))


def segpgd_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None, step: int, steps: int
) -> torch.Tensor:
    """SegPGD (Gu et al. 2022): correct pixels weigh 1 - lambda_t, wrong ones lambda_t,
    lambda_t = t / (2T), so the attack first pushes correct pixels over, then all."""
    lam = step / (2 * max(steps, 1))
    ce = pixel_ce(logits, labels, ignore_index)
    correct = (logits.argmax(1) == labels).float()
    weights = (1 - lam) * correct + lam * (1 - correct)
    return per_image_mean(ce * weights, labelled(labels, ignore_index))


def cospgd_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None, num_classes: int
) -> torch.Tensor:
    """CosPGD (Agnihotri et al. 2024): each pixel's CE scaled by the detached cosine
    similarity between its softmax and the one-hot label, so already-fooled pixels fade."""
    mask = labelled(labels, ignore_index)
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    probs = logits.detach().softmax(1)
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    cos = F.cosine_similarity(probs, onehot, dim=1)
    return per_image_mean(pixel_ce(logits, labels, ignore_index) * cos, mask)

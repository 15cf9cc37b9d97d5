"""Per-pixel losses for attacks on dense outputs; the ignore label never contributes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from audit.metrics import predict


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
    correct = (predict(logits) == labels).float()
    weights = (1 - lam) * correct + lam * (1 - correct)
    return per_image_mean(ce * weights, labelled(labels, ignore_index))


def cospgd_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """CosPGD (Agnihotri et al. 2024): each pixel's CE scaled by the detached cosine
    similarity between its softmax and the one-hot label, so already-fooled pixels fade."""
    mask = labelled(labels, ignore_index)
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    probs = logits.detach().softmax(1)
    # The cosine with a one-hot vector is the label's probability over the softmax's length
    # (F.cosine_similarity's value, with its 1e-8 floor); its reductions over the strided
    # class axis took a third of a CosPGD step on CPU.
    own = probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    cos = own / _class_norm(probs).clamp(min=1e-8)
    return per_image_mean(pixel_ce(logits, labels, ignore_index) * cos, mask)


def _class_norm(values: torch.Tensor) -> torch.Tensor:
    """The L2 norm over the class axis, N x H x W: ``norm(dim=1)`` is about ten times
    slower on CPU for N x K x H x W tensors (a strided reduction of a few classes)."""
    return values.square().sum(1).sqrt()


# -- the losses of SEA (Croce et al., "Towards reliable evaluation and fast training of robust
# semantic segmentation models"); each is a per-image mean over labelled pixels (N values).


def _onehot(labels: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    return F.one_hot(safe, num_classes).permute(0, 3, 1, 2)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Detached by construction (argmax): the mask selects pixels, it is not optimised.
    return (predict(logits) == labels).to(logits.dtype)


def masked_ce_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """Cross-entropy of the pixels still classified correctly: pixels already flipped stop
    pulling the gradient, so the budget goes to those left."""
    ce = pixel_ce(logits, labels, ignore_index) * _correct(logits, labels)
    return per_image_mean(ce, labelled(labels, ignore_index))


def masked_spherical_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """Margin (best other logit minus the true one) of the logits scaled to unit L2 norm per
    pixel (the norm detached), on correctly classified pixels only: bounded per pixel, so no
    single confident pixel dominates."""
    mask = labelled(labels, ignore_index)
    z = logits / _class_norm(logits.detach()).unsqueeze(1).clamp(min=1e-12)
    onehot = _onehot(labels, mask, logits.shape[1]).to(z.dtype)
    true = (z * onehot).sum(1)
    other = (z - 1e4 * onehot).amax(1)
    return per_image_mean((other - true) * _correct(logits, labels), mask)


def js_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Jensen-Shannon divergence between each pixel's softmax and its one-hot label: bounded
    by log 2, so it saturates on pixels already flipped instead of growing without end."""
    mask = labelled(labels, ignore_index)
    p = logits.softmax(1)
    q = _onehot(labels, mask, logits.shape[1]).to(p.dtype)
    m = ((p + q) / 2).clamp(min=1e-12)
    # x log(x/m) with 0 log 0 = 0; q is 0 or 1, so its term is -log m at the label only
    kl_p = (p * (p.clamp(min=1e-12).log() - m.log())).sum(1)
    kl_q = -(q * m.log()).sum(1)
    return per_image_mean((kl_p + kl_q) / 2, mask)


def balanced_ce_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """Cross-entropy with each pixel weighted by 1 - (share of the image's pixels in its
    class): small classes weigh more, as mIoU weighs every class alike."""
    mask = labelled(labels, ignore_index)
    onehot = _onehot(labels, mask, logits.shape[1]).to(logits.dtype) * mask.unsqueeze(1)
    share = onehot.flatten(2).sum(2) / labels[0].numel()  # N x K
    weight = 1 - (onehot * share[:, :, None, None]).sum(1)
    return per_image_mean(pixel_ce(logits, labels, ignore_index) * weight, mask)

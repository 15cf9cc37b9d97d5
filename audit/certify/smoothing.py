"""Randomized smoothing for segmentation (SegCertify, Fischer et al., ICML 2021).

The certified object is the *smoothed* classifier ``g_p(x) = argmax_c P(f_p(x + e) = c)``,
``e ~ N(0, sigma^2 I)`` in [0, 1] pixel space, of the audited model ``f``.  Per image:

1. ``n0`` noisy copies pick each pixel's candidate class ``c_p`` (the most frequent class;
   ties go to the lowest class index, so the result does not depend on the device).
2. ``n`` *fresh* noisy copies count ``n_p = #{f_p = c_p}``.  The selection copies are never
   reused for the count: the test is only valid on samples independent of the choice of
   ``c_p``.
3. A one-sided binomial test of ``H0: P(f_p = c_p) <= tau`` gives the p-value
   ``P(Binom(n, tau) >= n_p)``.  Only ``n + 1`` counts exist, so the survival function is
   tabulated once in float64 and gathered per pixel on the device (no per-pixel loop, no
   per-pixel SciPy call).
4. Holm (default) or Bonferroni over **all pixels of one image** at family-wise level
   ``alpha``: the family is one image's pixels, as in SegCertify, because the guarantee is a
   statement about one segmentation map.  Unlabelled pixels are in the family too: the
   certifier does not see labels, and leaving pixels out after looking at labels would not
   change validity but would make the certificate depend on the annotation.
5. Every pixel whose null is rejected is certified at radius ``R = sigma * PhiInv(tau)``
   (L2, [0, 1] pixel space), jointly for all certified pixels of the image with probability
   at least ``1 - alpha``; the others abstain (``-1``), and metrics count an abstention as an
   error.

Two details matter for validity and are easy to get wrong:

* Every noisy copy gets its own noise draw from the caller's generator.  The released
  SegCertify code reused one draw inside a batch, so its samples were not independent and
  its p-values were optimistic.
* The noisy image is **not** clipped to [0, 1].  The guarantee of step 5 is the Gaussian
  smoothing theorem for ``f`` evaluated at ``x + e``; clipping would certify a different
  base classifier (``f o clip``), which is fine only if said so, so we do not do it.

The ceiling: even when all ``n`` samples agree, the p-value is ``tau^n``, and both
corrections need the smallest p-value to be ``<= alpha / K`` (``K`` pixels).  A config with
``tau^n > alpha / K`` can never certify a pixel; :meth:`SmoothingConfig.validate` refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

from audit.errors import ConfigError, EvaluationError

__all__ = [
    "CORRECTIONS",
    "SmoothingConfig",
    "SmoothingResult",
    "binomial_sf_table",
    "bonferroni_reject",
    "certified_metrics",
    "holm_reject",
    "smoothing_certify",
]

Model = Callable[[torch.Tensor], torch.Tensor]

#: multiple-testing corrections over one image's pixels
CORRECTIONS: tuple[str, ...] = ("holm", "bonferroni")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class SmoothingConfig:
    """Parameters of one certification; every number is in [0, 1] pixel space.

    ``batch`` is how many noisy copies go through the model in one forward pass (copies of
    consecutive images may share a pass); it changes speed and memory, never the statistics.
    """

    sigma: float = 0.25
    n: int = 100
    n0: int = 10
    tau: float = 0.75
    alpha: float = 1e-3
    correction: str = "holm"
    batch: int = 16

    def validate(self, num_pixels: int) -> None:
        """Raise :class:`~audit.errors.ConfigError` (a ``ValueError``) for a config that is
        malformed or can never certify a pixel of an image with ``num_pixels`` pixels."""
        if not _is_real(self.sigma) or not math.isfinite(self.sigma) or self.sigma <= 0:
            raise ConfigError(f"sigma must be a finite number > 0, got {self.sigma!r}", key="sigma")
        if not _is_real(self.tau) or not 0.5 <= self.tau < 1:
            raise ConfigError(f"tau must be in [0.5, 1), got {self.tau!r}", key="tau")
        if not _is_real(self.alpha) or not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha!r}", key="alpha")
        for key in ("n", "n0", "batch"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}", key=key)
        if self.correction not in CORRECTIONS:
            raise ConfigError(
                f"correction must be one of {', '.join(map(repr, CORRECTIONS))}, "
                f"got {self.correction!r}",
                key="correction",
            )
        if not _is_int(num_pixels) or num_pixels < 1:
            raise ValueError(f"num_pixels must be a whole number >= 1, got {num_pixels!r}")
        # Compared in logs: tau^n underflows for large n, alpha/K does not matter here.
        log_floor = self.n * math.log(self.tau)
        log_level = math.log(self.alpha) - math.log(num_pixels)
        if log_floor > log_level:
            best_tau = math.floor(math.exp(log_level / self.n) * 1e4) / 1e4
            min_n = math.ceil(log_level / math.log(self.tau))
            # A tau of 0.5 or less certifies radius 0: never suggest one.
            lower_tau = ""
            if best_tau > 0.5:
                radius = self.sigma * NormalDist().inv_cdf(best_tau)
                lower_tau = f"tau <= {best_tau:g} (radius {radius:.3g}) or "
            raise ConfigError(
                f"tau={self.tau:g} with n={self.n} can never certify a pixel: even if all "
                f"{self.n} samples agree, a pixel's p-value is tau^n = {math.exp(log_floor):.3g}, "
                f"above alpha/K = {self.alpha:g}/{num_pixels} = {math.exp(log_level):.3g} "
                f"that {self.correction} needs for {num_pixels} pixels; use {lower_tau}"
                f"n >= {min_n} (or a larger alpha, or fewer pixels)"
            )

    @property
    def radius(self) -> float:
        """Certified L2 radius ``sigma * PhiInv(tau)`` in [0, 1] pixel space."""
        return self.sigma * NormalDist().inv_cdf(self.tau)

    @property
    def samples_per_image(self) -> int:
        """Noisy copies per image: ``n0`` to select, ``n`` to test."""
        return self.n0 + self.n

    def forward_passes(self, num_images: int) -> int:
        """Exact forward passes for ``num_images`` images: the copies of all images form one
        stream cut into passes of ``batch`` copies, so only the last pass may be short."""
        return -(-num_images * self.samples_per_image // self.batch)


@dataclass(frozen=True)
class SmoothingResult:
    """What :func:`smoothing_certify` found for a batch of ``N`` images of ``H x W`` pixels.

    ``prediction`` is ``N x H x W`` int64 with ``-1`` where the pixel abstains; every other
    pixel is certified at ``radius`` (jointly per image, with probability ``>= 1 - alpha``).
    ``pvalues`` (float64) and ``counts`` (``n_p``, int64) are per pixel before correction.
    """

    prediction: torch.Tensor
    radius: float
    pvalues: torch.Tensor
    forward_passes: int
    counts: torch.Tensor

    @property
    def certified(self) -> torch.Tensor:
        """``N x H x W`` bool: the pixels that do not abstain."""
        return self.prediction >= 0


def binomial_sf_table(
    n: int, tau: float, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``sf[k] = P(Binom(n, tau) >= k)`` for ``k = 0..n``, float64 (the test's p-values).

    Log-pmf from ``lgamma`` and a log-sum-exp of each upper tail, so tiny tails (``tau^n``
    at ``k = n``) keep full relative precision instead of underflowing through ``1 - cdf``.
    """
    k = torch.arange(n + 1, dtype=torch.float64, device=device)
    log_pmf = (
        math.lgamma(n + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma(n - k + 1)
        + k * math.log(tau)
        + (n - k) * math.log1p(-tau)
    )
    sf = torch.logcumsumexp(log_pmf.flip(0), dim=0).flip(0).exp().clamp(max=1.0)
    sf[0] = 1.0
    return sf


def holm_reject(pvalues: torch.Tensor, alpha: float) -> torch.Tensor:
    """Holm's step-down procedure along the last axis (one family per row).

    Sorted ascending, ``p_(i)`` (1-based) is rejected while ``p_(i) <= alpha / (m - i + 1)``
    holds for it and every smaller p-value; the first failure stops it.  Vectorised as a
    sort, a cumulative count of failures, and a scatter back to the original order.
    """
    m = pvalues.shape[-1]
    ordered, order = torch.sort(pvalues, dim=-1, stable=True)
    steps = torch.arange(m, dtype=torch.float64, device=pvalues.device)
    thresholds = alpha / (m - steps)
    passes = ordered <= thresholds
    prefix = torch.cumsum(~passes, dim=-1) == 0
    return torch.zeros_like(passes).scatter(-1, order, prefix)


def bonferroni_reject(pvalues: torch.Tensor, alpha: float) -> torch.Tensor:
    """Bonferroni along the last axis: reject ``p <= alpha / m``."""
    return pvalues <= alpha / pvalues.shape[-1]


def _stats_device(device: torch.device) -> torch.device:
    # The tests run in float64; MPS has no float64, so those few ops go to the CPU there.
    return torch.device("cpu") if device.type == "mps" else device


def _no_autocast(device: torch.device) -> Any:
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def smoothing_certify(
    model: Model,
    images: torch.Tensor,
    config: SmoothingConfig,
    *,
    generator: torch.Generator,
    num_classes: int,
) -> SmoothingResult:
    """Certify every pixel of ``images`` (``N x C x H x W`` in [0, 1]) by randomized smoothing.

    ``model`` maps images to ``N x num_classes x H x W`` logits; it is called under
    ``torch.no_grad`` with autocast disabled, on ``config.forward_passes(N)`` batches of at most
    ``config.batch`` noisy copies.  All noise comes from ``generator`` (drawn on its device),
    so the global RNG is untouched and a seeded generator gives a reproducible result.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images N x C x H x W, got shape {tuple(images.shape)}")
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    num, channels, height, width = images.shape
    config.validate(height * width)
    device = images.device
    images = images.detach()
    per_image = config.samples_per_image
    total = num * per_image

    chosen = torch.zeros(num, height, width, dtype=torch.int64, device=device)
    hits = torch.zeros(num, height, width, dtype=torch.int32, device=device)
    # Selection counts exist only for images whose n0 copies are still being drawn.
    selecting: dict[int, torch.Tensor] = {}
    bad_logits = torch.zeros((), dtype=torch.bool, device=device)
    passes = 0

    with torch.no_grad(), _no_autocast(device):
        for start in range(0, total, config.batch):
            stop = min(start + config.batch, total)
            rows = stop - start
            owner = torch.arange(start, stop, device=device) // per_image
            noise = torch.randn(
                (rows, channels, height, width),
                generator=generator,
                device=generator.device,
                dtype=images.dtype,
            ).to(device)
            noisy = noise.mul_(config.sigma).add_(images.index_select(0, owner))
            logits = model(noisy)
            passes += 1
            if tuple(logits.shape) != (rows, num_classes, height, width):
                raise EvaluationError(
                    f"model returned logits of shape {tuple(logits.shape)} for {rows} noisy "
                    f"images of {height}x{width}; expected {(rows, num_classes, height, width)}"
                )
            # max over classes (faster than argmax on CPU) propagates NaN, so checking the
            # maxima catches a NaN logit anywhere; ties go to the first class, as argmax.
            top, preds = logits.max(dim=1)
            bad_logits |= ~torch.isfinite(top).all()
            # Walk the images this pass covers (a handful): selection copies first, so an
            # image's class is fixed before any of its test copies is counted.
            for image in range(start // per_image, (stop - 1) // per_image + 1):
                first = image * per_image
                lo, hi = max(start, first) - first, min(stop, first + per_image) - first
                sel_lo, sel_hi = lo, min(hi, config.n0)
                if sel_lo < sel_hi:
                    counts = selecting.setdefault(
                        image,
                        torch.zeros(num_classes, height, width, dtype=torch.int32, device=device),
                    )
                    block = preds[first + sel_lo - start : first + sel_hi - start]
                    counts.scatter_add_(0, block, torch.ones_like(block, dtype=torch.int32))
                    if sel_hi == config.n0:
                        # argmax returns the first maximum: ties go to the lowest class.
                        chosen[image] = selecting.pop(image).argmax(dim=0)
                est_lo, est_hi = max(lo, config.n0), hi
                if est_lo < est_hi:
                    block = preds[first + est_lo - start : first + est_hi - start]
                    hits[image] += (block == chosen[image]).sum(dim=0, dtype=torch.int32)

    if bool(bad_logits):
        raise EvaluationError("model returned NaN or infinite logits on noisy inputs")

    stats = _stats_device(device)
    table = binomial_sf_table(config.n, config.tau, device=stats)
    counts64 = hits.to(stats, torch.int64)
    pvalues = table[counts64]
    flat = pvalues.reshape(num, height * width)
    if config.correction == "holm":
        rejected = holm_reject(flat, config.alpha)
    else:
        rejected = bonferroni_reject(flat, config.alpha)
    rejected = rejected.reshape(num, height, width).to(device)
    prediction = torch.where(rejected, chosen, torch.full_like(chosen, -1))
    return SmoothingResult(
        prediction=prediction,
        radius=config.radius,
        pvalues=pvalues.to(device) if device.type != "mps" else pvalues,
        forward_passes=passes,
        counts=counts64.to(device),
    )


def certified_metrics(
    result: SmoothingResult,
    labels: torch.Tensor,
    ignore_index: int | None = 255,
    *,
    num_classes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Additive per-image counts (int64, length ``N``) of a certification against ``labels``.

    ``labelled = certified_correct + certified_wrong + abstain`` over pixels whose label is not
    ``ignore_index``; certified pixel accuracy is ``sum(certified_correct) / sum(labelled)``,
    so an abstention counts as an error.  ``abstain_all`` counts abstentions over every pixel.
    With ``num_classes``, ``"confusion"`` is an ``N x K x (K + 1)`` matrix (rows: truth,
    columns: certified prediction, last column: abstain), from which a certified IoU counts
    abstentions as false negatives of the true class and false positives of none.
    """
    pred = result.prediction
    if labels.shape != pred.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != prediction {tuple(pred.shape)}")
    labels = labels.to(pred.device).long()
    num = pred.shape[0]
    keep = (
        torch.ones_like(labels, dtype=torch.bool)
        if ignore_index is None
        else (labels != ignore_index)
    )
    abstain = pred < 0

    def per_image(mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(num, -1).sum(dim=1, dtype=torch.int64)

    out = {
        "pixels": per_image(torch.ones_like(keep)),
        "labelled": per_image(keep),
        "certified_correct": per_image(keep & ~abstain & (pred == labels)),
        "certified_wrong": per_image(keep & ~abstain & (pred != labels)),
        "abstain": per_image(keep & abstain),
        "abstain_all": per_image(abstain),
    }
    if num_classes is not None:
        bad = keep & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            found = sorted(set(labels[bad].unique().tolist()))
            raise ValueError(f"labels {found} outside [0, {num_classes}) and not ignored")
        columns = num_classes + 1
        column = torch.where(abstain, torch.full_like(pred, num_classes), pred)
        image = torch.arange(num, device=pred.device).view(num, 1, 1).expand_as(labels)
        flat = (image * num_classes * columns + labels * columns + column)[keep]
        out["confusion"] = torch.bincount(flat, minlength=num * num_classes * columns).reshape(
            num, num_classes, columns
        )
    return out

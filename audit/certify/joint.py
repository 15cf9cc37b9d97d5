"""Joint-budget certified metrics (Massena et al., reference section 3), as per-image state.

Budget model.  An L2 perturbation with ``||delta||_2 <= eps`` moves the whole logit map by at
most ``L eps`` in L2, so its *squared* output budget is ``B = (L (1 + kappa) eps)^2`` (the
``1 + kappa`` absorbs float32 rounding in the forward pass, see :mod:`.margins`).  Changing
the argmax at pixel ``p`` costs at least ``c_p = m_p^2 / 2`` of it, and pixels own disjoint
output coordinates, so a set of pixels can all change only if their costs sum to at most
``B``.  The attacker here is that relaxed one: anything a real attacker does is also
possible for it, so every count below is a sound bound for the real model, and exact for
the relaxation.  Each image has its own perturbation and its own budget ``B``.

Shapes.  ``logits`` N x K x H x W (float32/float64, cast to float64 here), ``labels``
N x H x W, ``eps_grid`` a 1-D sequence of E epsilons in [0, 1] pixel space.  Every curve over
the grid comes from one forward pass and one sort per image of the costs that fit the largest
budget (for IoU, all classes at once, :mod:`.cheapest`): the grid is answered by searching
their running sums.

Aggregation (the pitfall of reference section 3).  Certified pixel accuracy counts are
additive: a per-image lower bound on correct pixels sums to a lower bound on the dataset's.
Per-image *worst-case IoU pairs* are not: choosing each image's worst ratio and summing
numerators and denominators is NOT a lower bound of the dataset IoU, because a ratio's worst
case for one image depends on the others' denominators.  Use
:func:`mean_per_image_iou_lower_bound` (a different metric, averaged per image) or
:func:`dataset_iou_lower_bound` (the dataset IoU's exact minimum by bisection on lambda).

No Python loops over pixels or classes.  Works on any device; only shape sizes and final
scalars leave it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .cheapest import (
    Pair,
    Selector,
    cheapest_sums,
    count_at_most,
    histogram_guess,
    prefix_counts,
    topk_guess,
)
from .margins import DEFAULT_KAPPA, certified_radius, flip_costs, output_budget

__all__ = [
    "IoUProfile",
    "certified_fraction_counts",
    "certified_miou_lower_bound",
    "certified_pixel_accuracy_counts",
    "dataset_iou_lower_bound",
    "iou_profile",
    "mean_per_image_iou_lower_bound",
    "robustness_at_alpha",
    "worst_case_iou_counts",
]

EpsGrid = float | Sequence[float] | torch.Tensor

#: unit roundoff of float64, for the bisection's rounding slack
_UNIT_ROUNDOFF = 2.0**-53


def _grid(eps_grid: EpsGrid, lipschitz: float, kappa: float, device: torch.device) -> torch.Tensor:
    """The E squared output budgets of a 1-D grid (a scalar counts as a grid of one)."""
    budget = output_budget(lipschitz, eps_grid, kappa=kappa, device=device)
    if budget.dim() > 1:
        raise ValueError(f"eps_grid must be 1-D, got shape {tuple(budget.shape)}")
    return budget.reshape(-1)


def _labelled_costs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lipschitz: float,
    eps_grid: EpsGrid,
    ignore_index: int | None,
    kappa: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The E budgets, the N x H x W predictions and flip costs, and the mask of labelled
    pixels; labels of the wrong shape, or outside [0, K) and not ignored, raise."""
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}"
        )
    budget = _grid(eps_grid, lipschitz, kappa, logits.device)
    pred, cost = flip_costs(logits)
    num_classes = logits.shape[1]
    keep = torch.ones_like(labels, dtype=torch.bool)
    if ignore_index is not None:
        keep = labels != ignore_index
    bad = keep & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = sorted(set(labels[bad].unique().tolist()))
        raise ValueError(f"labels hold {values} outside [0, {num_classes}) and not ignored")
    return budget, pred, cost, keep


def _counted(cost: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The pixels counted, N x HW bool: ``mask`` (N x H x W, the shape of ``cost``), or all."""
    if mask is None:
        mask = torch.ones_like(cost, dtype=torch.bool)
    if mask.shape != cost.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {tuple(cost.shape)}")
    return mask.reshape(cost.shape[0], -1)


def certified_pixel_accuracy_counts(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lipschitz: float,
    eps_grid: EpsGrid,
    *,
    ignore_index: int | None = 255,
    kappa: float = DEFAULT_KAPPA,
) -> torch.Tensor:
    """Certified-correct and labelled pixel counts per image and epsilon, N x E x 2 int64.

    Column 0: correct pixels that stay correct under every perturbation of norm ``eps``.  The
    attacker can break at most the longest prefix of the image's correct pixels, sorted by
    cost, whose cumulative cost fits in ``B``; the rest are certified.  Pixels already wrong
    cost nothing and are never counted.  Column 1: labelled pixels.  Both columns are additive
    over images (each image's bound holds for its own perturbation), so ``counts.sum(0)`` with
    :func:`audit.metrics.ratio_of_sums` gives the dataset's certified pixel accuracy.  At
    ``eps = 0`` column 0 is the clean correct count minus exact ties (margin 0).
    """
    budget, pred, cost, keep = _labelled_costs(
        logits, labels, lipschitz, eps_grid, ignore_index, kappa
    )
    n = logits.shape[0]
    cost = cost.reshape(n, -1)
    correct = (keep & (pred == labels)).reshape(n, -1)
    broken = prefix_counts(torch.where(correct, cost, math.inf), budget)
    certified = correct.sum(1, keepdim=True) - broken
    total = keep.reshape(n, -1).sum(1, keepdim=True).expand_as(certified)
    return torch.stack([certified, total], dim=-1)


def certified_fraction_counts(
    logits: torch.Tensor,
    lipschitz: float,
    eps_grid: EpsGrid,
    *,
    mask: torch.Tensor | None = None,
    kappa: float = DEFAULT_KAPPA,
) -> torch.Tensor:
    """Label-free certificates per image and epsilon, N x E x 3 int64.

    Column 0: pixels whose prediction is certified individually
    (:func:`.margins.is_certified`, radius > eps).  Column 1: the joint guarantee, how many
    predictions are certain to stay unchanged under one perturbation of norm ``eps`` (counted
    pixels minus the most the joint budget can flip).  Column 2: pixels counted (``mask``,
    N x H x W bool, default all).  Column 1 >= column 0 mathematically (an individually
    certified pixel never fits in the affordable prefix); both are sound, and the larger is
    kept so float rounding at the exact boundary cannot invert them.  Additive over images.
    """
    budget = _grid(eps_grid, lipschitz, kappa, logits.device)
    _, cost = flip_costs(logits)
    n = logits.shape[0]
    mask = _counted(cost, mask)
    eps = torch.as_tensor(eps_grid, dtype=torch.float64, device=logits.device).reshape(-1)
    radius = certified_radius(logits, lipschitz, kappa=kappa).reshape(n, -1)
    individual = _count_above(radius, eps, mask)
    counted = mask.sum(1, keepdim=True)
    flippable = prefix_counts(torch.where(mask, cost.reshape(n, -1), math.inf), budget)
    joint = torch.maximum(counted - flippable, individual)
    return torch.stack([individual, joint, counted.expand_as(joint)], dim=-1)


def _count_above(radius: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row of ``radius`` (N x P), the ``mask``-ed entries ``> eps[j]`` for each of the E
    epsilons, N x E int64: :func:`.margins.is_certified`'s comparison, counted from each
    radius's place in the sorted grid instead of an N x E x P table (NaN never counts)."""
    n, e = radius.shape[0], eps.numel()
    order = eps.argsort()
    # bucketize gives the number of grid values strictly below each radius
    below = torch.bucketize(radius, eps[order].contiguous())
    below = torch.where(mask & ~radius.isnan(), below, 0)
    rows = torch.arange(n, device=radius.device).unsqueeze(1) * (e + 1)
    hist = torch.bincount((rows + below).reshape(-1), minlength=n * (e + 1)).reshape(n, e + 1)
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # certified at the j-th smallest: below > j
    return torch.empty_like(above).index_copy_(1, order, above)


def robustness_at_alpha(
    logits: torch.Tensor,
    lipschitz: float,
    alpha: float,
    *,
    mask: torch.Tensor | None = None,
    kappa: float = DEFAULT_KAPPA,
) -> torch.Tensor:
    """Per image, the certified L2 radius below which no perturbation changes the prediction
    of a fraction ``alpha`` of its pixels (N float64; labels not needed).

    Flipping the ``k = ceil(alpha * n)`` cheapest pixels costs ``S_k`` (the sum of their
    ``m^2 / 2``), and any other ``k`` pixels cost more, so ``eps = sqrt(S_k) / (L (1 +
    kappa))`` is the smallest radius whose budget ``(L (1 + kappa) eps)^2`` covers them.  For
    one pixel this is the per-pixel radius ``m / (sqrt(2) L (1 + kappa))``.  ``alpha = 0``
    gives 0; an image with no counted pixel (``mask``) gives NaN.
    """
    lip = float(output_budget(lipschitz, 1.0, kappa=kappa).sqrt())  # L (1 + kappa), checked
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    _, cost = flip_costs(logits)
    n = logits.shape[0]
    mask = _counted(cost, mask)
    counted = mask.sum(1)
    # the 1e-12 keeps alpha * n = 3.0000000000000004 from asking for a fourth pixel
    k = torch.ceil(counted.to(torch.float64) * float(alpha) * (1.0 - 1e-12)).long()
    cumulative = torch.where(mask, cost.reshape(n, -1), math.inf).sort(1).values.cumsum(1)
    cumulative = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative], dim=1)
    total = cumulative.gather(1, k.unsqueeze(1)).squeeze(1)
    radius = total.sqrt() / lip
    return torch.where(counted > 0, radius, math.nan)


@dataclass(frozen=True)
class IoUProfile:
    """Everything the joint-budget attacker can do to each image's IoU, per epsilon and class.

    For class k of image i, the attacker breaks ``t`` true positives (cheapest first, each
    becomes a false negative) and spends the rest of ``B`` turning the cheapest true
    negatives into false positives, ``f(t)`` of them, for ``t`` from 0 (always affordable) to
    the most ``B`` can break.  Other moves only raise IoU.  The attacked IoU after choice
    ``t`` is ``(tp - t) / (tp + fp + fn + f(t))``.

    Kept: ``t`` where ``f(t + 1) < f(t)``, and the last affordable ``t`` (where ``f(t + 1) =
    f(t)``, ``t + 1`` has a smaller numerator, same denominator, so no IoU minimum takes
    ``t``).  Image i, epsilon e, class k owns ``choices[i, e, k]`` consecutive ``steps``
    (``t``, ascending) and ``flips`` (``f(t)``, the first ``f(0)``), in ``choices.flatten()``
    order.  Batches concatenate along images (:meth:`cat`); keeping them, not per-image
    minima, lets :func:`dataset_iou_lower_bound` solve the dataset-level problem exactly.
    """

    tp: torch.Tensor  #: N x K int64, clean true positives (labelled pixels only)
    fn: torch.Tensor  #: N x K int64, clean false negatives
    fp: torch.Tensor  #: N x K int64, clean false positives
    labelled: torch.Tensor  #: N int64, labelled pixels per image
    choices: torch.Tensor  #: N x E x K int64, undominated choices kept (>= 1)
    steps: torch.Tensor  #: C int64, true positives broken, ``t``
    flips: torch.Tensor  #: C int64, new false positives affordable after them, ``f(t)``
    eps: torch.Tensor  #: E float64

    @property
    def base(self) -> torch.Tensor:
        """Clean IoU denominators ``tp + fp + fn``, N x K."""
        return self.tp + self.fp + self.fn

    @functools.cached_property
    def _group(self) -> torch.Tensor:
        """Which (image, epsilon, class) group each choice belongs to, C int64."""
        sizes = self.choices.reshape(-1)
        return torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)

    @functools.cached_property
    def _bounds(self) -> dict[float, torch.Tensor]:
        """:func:`dataset_iou_lower_bound` per ``tol``: claims ask for it item by item.  Not a
        field, so neither equality nor the store (:mod:`audit.store`) sees it."""
        return {}

    def _per_choice(self, table: torch.Tensor) -> torch.Tensor:
        """An N x K table's entry for each choice's image and class, C."""
        k, group = self.tp.shape[1], self._group
        return table.reshape(-1)[group // (self.eps.numel() * k) * k + group % k]

    @classmethod
    def cat(cls, profiles: Sequence[IoUProfile]) -> IoUProfile:
        """Concatenate the images of several profiles (same epsilons and classes)."""
        if not profiles:
            raise ValueError("need at least one profile")
        first = profiles[0]
        for p in profiles[1:]:
            if p.eps.shape != first.eps.shape or not torch.equal(p.eps.cpu(), first.eps.cpu()):
                raise ValueError("profiles use different epsilon grids")
            if p.tp.shape[1] != first.tp.shape[1]:
                raise ValueError("profiles have different numbers of classes")
        names = [f.name for f in dataclasses.fields(cls) if f.name != "eps"]
        return cls(
            **{a: torch.cat([getattr(p, a) for p in profiles]) for a in names}, eps=first.eps
        )

    def worst_case_counts(self) -> torch.Tensor:
        """Per image the attacked ``(tp, tp + fp + fn)`` pair of least IoU, N x E x K x 2.

        Exact for the budget model: every kept ``t`` is tried, the smallest on ties.  ``(0,
        0)`` where the class is absent from the image's labels and prediction and cannot be
        made to appear.  Never sum these pairs over images to bound a dataset IoU (module
        docstring): see :func:`dataset_iou_lower_bound`.
        """
        num = self._per_choice(self.tp) - self.steps
        den = self._per_choice(self.base) + self.flips
        ratio = torch.where(den > 0, num.double() / den.clamp(min=1).double(), math.inf)
        best = _first_best(ratio, self._group, self.choices.numel(), largest=False)
        return torch.stack([num[best], den[best]], dim=-1).reshape(*self.choices.shape, 2)


def _first_best(x: torch.Tensor, group: torch.Tensor, groups: int, largest: bool) -> torch.Tensor:
    """Per group (every one non-empty), the index of its first largest (or least) ``x``."""
    reduce = "amax" if largest else "amin"
    best = x.new_zeros(groups).scatter_reduce(0, group, x, reduce, include_self=False)
    index = torch.where(x == best[group], torch.arange(x.numel(), device=x.device), x.numel())
    return index.new_zeros(groups).scatter_reduce(0, group, index, "amin", include_self=False)


def _join_costs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    keep: torch.Tensor,
    limit: torch.Tensor,
) -> tuple[Selector, torch.Tensor]:
    """For :func:`cheapest_sums`, true negatives of class k joining it at ``(max_j z_j -
    z_k)^2 / 2`` (N x P ``labels``, ``pred``, ``keep``): a selector and a first guess.  Only
    gaps that pass a test in the logits' precision get a float64 cost, computed as the
    per-class sort did.  A cost ``<= theta`` has a real gap ``<= sqrt(2 theta) (1 + 2^-50)``
    and rounding is monotone, so the rounded gap against the rounded bound loses none (``1 +
    1e-5`` is slack; ``1e-150`` keeps gaps whose square underflows).  Non-finite gaps pass.
    """
    n, k = logits.shape[:2]
    z = logits.detach()
    z = (z if z.dtype == torch.float32 else z.to(torch.float64)).reshape(n, k, -1)
    top = z.amax(dim=1, keepdim=True)
    gap, pixels = top - z, z.shape[-1]
    # no pixel joins its predicted or true class, nor an ignored one: far gaps keep them out
    # of the guess and of the selection (which checks again, for huge budgets)
    gap.scatter_(1, pred.unsqueeze(1), 1e37)
    gap.scatter_(1, torch.where(keep, labels, pred).unsqueeze(1), 1e37)
    gap.masked_fill_(~keep.unsqueeze(1), 1e37)

    far = torch.tensor(1e37, dtype=gap.dtype, device=gap.device)  # an excluded entry's gap

    def select(theta: torch.Tensor) -> Pair:
        bound = ((2 * theta).sqrt() * (1 + 1e-5) + 1e-150).to(gap.dtype).view(n, k, 1)
        where = (~((gap > bound) & (gap < 1e38))).reshape(-1).nonzero().squeeze(1)
        flat = where // (k * pixels) * pixels + where % pixels
        if not bool((bound < far).all()):
            # a budget this large lets the excluded entries through: check each again
            cls = where // pixels % k
            tn = keep.reshape(-1)[flat] & (labels.reshape(-1)[flat] != cls)
            tn &= pred.reshape(-1)[flat] != cls
            where, flat = where[tn], flat[tn]
        cost = (top.reshape(-1)[flat].double() - z.reshape(-1)[where].double()).square() / 2
        return where // pixels, torch.where(torch.isfinite(cost), cost, 0.0)

    return select, topk_guess(gap.reshape(n * k, pixels), limit)


def iou_profile(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lipschitz: float,
    eps_grid: EpsGrid,
    *,
    ignore_index: int | None = 255,
    kappa: float = DEFAULT_KAPPA,
) -> IoUProfile:
    """Build the :class:`IoUProfile` of a batch: one pass over the logits, all epsilons.

    Costs (reference section 3), per class k over labelled pixels: a true positive leaves k
    at ``(z_k - max_{j != k} z_j)^2 / 2`` (its own ``m^2 / 2``); a true negative becomes k at
    ``(max_{j != k} z_j - z_k)^2 / 2``: least squared output displacements, so the profile's
    attacker is at least as strong as any real one within ``eps``.  Only the cheapest costs
    that fit the largest budget are sorted, the break costs of all classes together.
    """
    budget, pred, cost, keep = _labelled_costs(
        logits, labels, lipschitz, eps_grid, ignore_index, kappa
    )
    k, (n, e) = logits.shape[1], (logits.shape[0], budget.numel())
    groups, device = n * k, logits.device
    limit = budget.max() if e else budget.new_zeros(())
    pred, cost, keep = pred.reshape(n, -1), cost.reshape(n, -1), keep.reshape(n, -1)
    labels = labels.reshape(n, -1).long()
    image = torch.arange(n, device=device).unsqueeze(1) * k
    hit = keep & (labels == pred)
    held, cost = (image + pred)[hit], cost[hit]
    tp, truth, said = (
        torch.bincount(i, minlength=groups).reshape(n, k)
        for i in (held, (image + labels)[keep], (image + pred)[keep])
    )
    guess = histogram_guess(held, cost, groups, limit)
    breaks, broken = cheapest_sums(lambda _: (held, cost), guess, limit)
    joins, joined = cheapest_sums(*_join_costs(logits, labels, pred, keep, limit), limit)
    # t_max per (image, class, epsilon), then every affordable t, grouped (image, eps, class)
    each = torch.arange(groups, device=device).repeat_interleave(e)
    most = count_at_most(breaks, broken, each, budget.repeat(groups))
    most = most.reshape(n, k, e).transpose(1, 2).reshape(-1)
    group = torch.repeat_interleave(torch.arange(most.numel(), device=device), most + 1)
    start = (most + 1).cumsum(0) - (most + 1)
    t = torch.arange(group.numel(), device=device) - start[group]
    owner = group // (e * k) * k + group % k
    spent = torch.cat([budget.new_zeros(1), breaks])
    spent = spent[torch.where(t > 0, (broken.cumsum(0) - broken)[owner] + t, 0)]
    f = count_at_most(joins, joined, owner, budget[group // k % e] - spent)
    keep_choice = (t == most[group]) | (torch.cat([f[1:], f[-1:]]) < f)
    return IoUProfile(
        tp=tp,
        fn=truth - tp,
        fp=said - tp,
        labelled=keep.sum(1),
        choices=torch.bincount(group[keep_choice], minlength=most.numel()).reshape(n, e, k),
        steps=t[keep_choice],
        flips=f[keep_choice],
        eps=torch.as_tensor(eps_grid, dtype=torch.float64, device=device).reshape(-1),
    )


def worst_case_iou_counts(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lipschitz: float,
    eps_grid: EpsGrid,
    *,
    ignore_index: int | None = 255,
    kappa: float = DEFAULT_KAPPA,
) -> torch.Tensor:
    """Per image, epsilon and class the attacked ``(tp, tp + fp + fn)`` of least IoU,
    N x E x K x 2 int64 (:meth:`IoUProfile.worst_case_counts`).

    Additive-looking but NOT additive: never sum it over images to bound a dataset IoU.
    """
    profile = iou_profile(
        logits, labels, lipschitz, eps_grid, ignore_index=ignore_index, kappa=kappa
    )
    return profile.worst_case_counts()


def mean_per_image_iou_lower_bound(worst_counts: torch.Tensor) -> torch.Tensor:
    """Lower bound of the mean over images of per-image IoU, E x K float64.

    ``worst_counts`` is :func:`worst_case_iou_counts`'s N x E x K x 2.  Images whose
    worst-case denominator is 0 (class absent from labels and prediction, and it cannot be made
    to appear) are skipped, as an IoU over nothing is undefined; NaN where every image is.
    Sound: an image with the class in its labels keeps a positive denominator under any
    attack and its IoU is at least its worst case; an image without it has IoU 0 if the class
    appears, and the bound already counts every image where it can appear, at 0.
    """
    num, den = worst_counts[..., 0].double(), worst_counts[..., 1].double()
    present = den > 0
    ratio = torch.where(present, num / den.clamp(min=1), 0.0)
    count = present.sum(0)
    return torch.where(count > 0, ratio.sum(0) / count.clamp(min=1), math.nan)


def _best_choice(profile: IoUProfile, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the attacker's choice minimising ``tp' - lam * den'``: it maximises
    ``t + lam * f(t)``.  Returns the summed ``(tp', den')`` over images, E x K float64."""
    group, shape = profile._group, profile.choices.shape
    gain = profile.steps.double() + lam.reshape(-1)[group % lam.numel()] * profile.flips.double()
    best = _first_best(gain, group, profile.choices.numel(), largest=True)
    t, f = profile.steps[best].reshape(shape), profile.flips[best].reshape(shape)
    num = (profile.tp[:, None, :] - t).double().sum(0)
    den = (profile.base[:, None, :] + f).double().sum(0)
    return num, den


def dataset_iou_lower_bound(profile: IoUProfile, *, tol: float = 1e-6) -> torch.Tensor:
    """Lower bound of the dataset-level IoU (one summed confusion matrix) under attack, E x K.

    The attacker perturbs every image independently within its own budget and minimises
    ``sum_i tp_i' / sum_i den_i'``.  For a ratio, "lambda >= min" is equivalent to
    ``min sum_i (tp_i' - lambda den_i') <= 0``, and that minimum separates per image
    (:func:`_best_choice`), so bisection on lambda in [0, 1] finds the exact minimum of this
    fractional problem (Dinkelbach's parametrisation).  The result is the infeasible end of
    the final bracket (width <= ``tol``) minus a float64 rounding slack, so it never exceeds
    the true minimum.  A class absent from every image's labels gets 0 if it can be made to
    appear somewhere and NaN if it cannot (its IoU is then undefined).  Solved once per
    profile and ``tol``, for every epsilon and class together, and remembered.
    """
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must lie in (0, 1), got {tol!r}")
    if tol not in profile._bounds:
        profile._bounds[tol] = _solve_dataset_bound(profile, tol)
    return profile._bounds[tol].clone()


def _solve_dataset_bound(profile: IoUProfile, tol: float) -> torch.Tensor:
    shape, device = tuple(profile.choices.shape[1:]), profile.choices.device
    support = (profile.tp + profile.fn).double().sum(0).expand(shape)
    lo, hi = (torch.full(shape, v, dtype=torch.float64, device=device) for v in (0.0, 1.0))
    num, _ = _best_choice(profile, lo)
    zero = num <= 0
    for _ in range(math.ceil(math.log2(1.0 / tol))):
        mid = (lo + hi) / 2
        num, den = _best_choice(profile, mid)
        feasible = num - mid * den <= 0
        hi = torch.where(feasible, mid, hi)
        lo = torch.where(feasible, lo, mid)
    slack = 8 * _UNIT_ROUNDOFF * (profile.labelled.double().sum() + 1) / support.clamp(min=1)
    bound = torch.where(zero, 0.0, (lo - slack).clamp(min=0.0))
    sizes = profile.choices.reshape(-1)
    joinable = profile.flips[sizes.cumsum(0) - sizes].reshape(profile.choices.shape)
    appears = ((profile.fp[:, None, :] > 0) | (joinable > 0)).any(0)
    absent = torch.where(appears, 0.0, math.nan)
    return torch.where(support > 0, bound, absent)


def certified_miou_lower_bound(
    profile: IoUProfile,
    *,
    aggregation: Literal["dataset", "per_image"] = "dataset",
    tol: float = 1e-6,
) -> torch.Tensor:
    """Lower bound of mIoU under attack per epsilon, E float64: the mean over classes of
    sound per-class lower bounds, over the classes whose bound is defined.

    ``aggregation="dataset"`` bounds :func:`audit.metrics.miou` of the summed confusion
    matrix (classes present in labels or prediction), from :func:`dataset_iou_lower_bound`.
    ``"per_image"`` bounds the class mean of per-class mean-over-images IoU, from
    :func:`mean_per_image_iou_lower_bound`; it is a different metric, name it when reporting.

    Soundness: each class's bound holds against every attack, so their sum bounds the sum for
    the one attack actually used.  Classes in some label are always in the mean; a class in
    no label enters the real mean only if it appears in the attacked prediction, with IoU 0,
    and it is counted here (at 0) wherever it can appear, which only lowers the mean.
    """
    if aggregation == "dataset":
        per_class = dataset_iou_lower_bound(profile, tol=tol)
    elif aggregation == "per_image":
        per_class = mean_per_image_iou_lower_bound(profile.worst_case_counts())
    else:
        raise ValueError(f"aggregation must be 'dataset' or 'per_image', got {aggregation!r}")
    present = ~torch.isnan(per_class)
    count = present.sum(-1)
    total = torch.where(present, per_class, 0.0).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), math.nan)

"""The worst-case IoU machinery against the implementation it replaced, on random batches.

:func:`audit.certify.joint.iou_profile` used to sort every pixel once per class and keep the
dense N x E x K x M table of ``f(t)``; it now sorts only costs that fit in the largest budget
and keeps the undominated choices.  Every result must stay the same: the table rebuilt from
the kept choices, the per-image worst cases, and the dataset bound, bit for bit, on batches
with ignored pixels, absent classes, ties, radius 0, huge radii and single-pixel images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

import audit.evaluations  # noqa: F401 (registers IoUProfile with the store)
from audit import store
from audit.certify import cheapest, joint
from audit.certify.margins import flip_costs, output_budget

KAPPA = 1e-3
IGNORE = 255
_UNIT_ROUNDOFF = 2.0**-53


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The test machine has two busy cores; one thread keeps timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- reference
# The implementation this module replaced (commit 2e64e2e), verbatim but for names and the
# label checks: one sort per class over every pixel, the dense N x E x K x M table of f(t).


def _old_labelled_costs(logits, labels, lipschitz, eps_grid, ignore_index, kappa):
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError("labels shape does not match logits")
    budget = output_budget(lipschitz, eps_grid, kappa=kappa, device=logits.device).reshape(-1)
    pred, cost = flip_costs(logits)
    keep = (
        torch.ones_like(labels, dtype=torch.bool)
        if ignore_index is None
        else labels != ignore_index
    )
    return budget, pred, cost, keep


def _old_pad_flips(flips):
    width = max(f.shape[-1] for f in flips)
    return [torch.nn.functional.pad(f, (0, width - f.shape[-1]), value=-1) for f in flips]


@dataclass(frozen=True)
class OldProfile:
    tp: torch.Tensor
    fn: torch.Tensor
    fp: torch.Tensor
    labelled: torch.Tensor
    flips: torch.Tensor
    eps: torch.Tensor

    @property
    def base(self) -> torch.Tensor:
        return self.tp + self.fp + self.fn

    @classmethod
    def cat(cls, profiles):
        first = profiles[0]
        return cls(
            tp=torch.cat([p.tp for p in profiles]),
            fn=torch.cat([p.fn for p in profiles]),
            fp=torch.cat([p.fp for p in profiles]),
            labelled=torch.cat([p.labelled for p in profiles]),
            flips=torch.cat(_old_pad_flips([p.flips for p in profiles])),
            eps=first.eps,
        )

    def worst_case_counts(self) -> torch.Tensor:
        steps = torch.arange(self.flips.shape[-1], device=self.flips.device)
        tp = self.tp[:, None, :, None]
        num = tp - steps
        den = self.base[:, None, :, None] + self.flips
        usable = (self.flips >= 0) & (den > 0)
        ratio = torch.where(usable, num.double() / den.clamp(min=1).double(), math.inf)
        best = ratio.argmin(dim=-1, keepdim=True)
        pair_num = num.expand_as(den).gather(-1, best).squeeze(-1)
        pair_den = den.gather(-1, best).squeeze(-1)
        return torch.stack([pair_num, pair_den], dim=-1)


def old_iou_profile(logits, labels, lipschitz, eps_grid, *, ignore_index=255, kappa=KAPPA):
    budget, pred, cost, keep = _old_labelled_costs(
        logits, labels, lipschitz, eps_grid, ignore_index, kappa
    )
    num_classes = logits.shape[1]
    n, e = logits.shape[0], budget.numel()
    z = logits.detach().to(torch.float64).reshape(n, num_classes, -1)
    top = z.amax(dim=1)
    pred, cost, keep = pred.reshape(n, -1), cost.reshape(n, -1), keep.reshape(n, -1)
    labels = labels.reshape(n, -1)
    tps, fns, fps, per_class = [], [], [], []
    for k in range(num_classes):
        truth, said = keep & (labels == k), keep & (pred == k)
        tp, tn = truth & said, keep & ~truth & ~said
        tps.append(tp.sum(1))
        fns.append((truth & ~said).sum(1))
        fps.append((keep & ~truth & said).sum(1))
        gain = (top - z[:, k]).square() / 2
        gain = torch.where(torch.isfinite(gain), gain, 0.0)
        breaks = torch.where(tp, cost, math.inf).sort(1).values.cumsum(1)
        joins = torch.where(tn, gain, math.inf).sort(1).values.cumsum(1).contiguous()
        affordable = torch.searchsorted(breaks, budget.expand(n, e).contiguous(), right=True)
        width = int(affordable.max().item()) + 1 if n else 1
        spent = torch.cat([torch.zeros_like(breaks[:, :1]), breaks[:, : width - 1]], dim=1)
        left = budget.view(1, e, 1) - spent.view(n, 1, width)
        f = torch.searchsorted(joins, left.reshape(n, -1).contiguous(), right=True)
        per_class.append(torch.where(left >= 0, f.reshape(n, e, width), -1))
    return OldProfile(
        tp=torch.stack(tps, 1),
        fn=torch.stack(fns, 1),
        fp=torch.stack(fps, 1),
        labelled=keep.sum(1),
        flips=torch.stack(_old_pad_flips(per_class), dim=2),
        eps=torch.as_tensor(eps_grid, dtype=torch.float64, device=logits.device).reshape(-1),
    )


def _old_best_choice(profile, lam):
    steps = torch.arange(profile.flips.shape[-1], device=lam.device, dtype=torch.float64)
    gain = steps + lam[None, :, :, None] * profile.flips.double()
    gain = torch.where(profile.flips >= 0, gain, -math.inf)
    t = gain.argmax(dim=-1, keepdim=True)
    f = profile.flips.gather(-1, t).squeeze(-1)
    num = (profile.tp[:, None, :] - t.squeeze(-1)).double().sum(0)
    den = (profile.base[:, None, :] + f).double().sum(0)
    return num, den


def old_dataset_iou_lower_bound(profile, *, tol=1e-6):
    shape = (profile.flips.shape[1], profile.flips.shape[2])
    device = profile.flips.device
    support = (profile.tp + profile.fn).double().sum(0).expand(shape)
    lo = torch.zeros(shape, dtype=torch.float64, device=device)
    hi = torch.ones(shape, dtype=torch.float64, device=device)
    num, _ = _old_best_choice(profile, lo)
    zero = num <= 0
    for _ in range(math.ceil(math.log2(1.0 / tol))):
        mid = (lo + hi) / 2
        num, den = _old_best_choice(profile, mid)
        feasible = num - mid * den <= 0
        hi = torch.where(feasible, mid, hi)
        lo = torch.where(feasible, lo, mid)
    slack = 8 * _UNIT_ROUNDOFF * (profile.labelled.double().sum() + 1) / support.clamp(min=1)
    bound = torch.where(zero, 0.0, (lo - slack).clamp(min=0.0))
    appears = ((profile.fp[:, None, :] > 0) | (profile.flips[..., 0] > 0)).any(0)
    absent = torch.where(appears, 0.0, math.nan)
    return torch.where(support > 0, bound, absent)


# --------------------------------------------------------------------------- comparison


def dense_flips(profile: joint.IoUProfile, width: int) -> torch.Tensor:
    """The old N x E x K x ``width`` table of ``f(t)`` (-1 where unaffordable), rebuilt from
    the kept choices: ``f(t)`` is that of the first kept choice at or after ``t``."""
    n, e, k = profile.choices.shape
    table = torch.full((n * e * k, width), -1, dtype=torch.int64)
    start = 0
    for g, size in enumerate(profile.choices.reshape(-1).tolist()):
        steps = profile.steps[start : start + size].tolist()
        flips = profile.flips[start : start + size].tolist()
        assert size >= 1 and steps == sorted(set(steps)) and flips == sorted(flips, reverse=True)
        assert steps[-1] < width
        t = 0
        for step, f in zip(steps, flips, strict=True):
            table[g, t : step + 1] = f
            t = step + 1
        start += size
    assert start == profile.steps.numel() == profile.flips.numel()
    return table.reshape(n, e, k, width)


def assert_same(old: OldProfile, new: joint.IoUProfile) -> None:
    for name in ("tp", "fn", "fp", "labelled", "eps"):
        assert torch.equal(getattr(old, name), getattr(new, name)), name
    width = max(old.flips.shape[-1], int(new.steps.max()) + 1 if new.steps.numel() else 1)
    padded = torch.nn.functional.pad(old.flips, (0, width - old.flips.shape[-1]), value=-1)
    assert torch.equal(padded, dense_flips(new, width))
    assert torch.equal(old.worst_case_counts(), new.worst_case_counts())
    if old.tp.shape[0]:
        expected = old_dataset_iou_lower_bound(old)
        got = joint.dataset_iou_lower_bound(new)
        assert torch.equal(expected.isnan(), got.isnan())
        assert torch.equal(expected.nan_to_num(-1.0), got.nan_to_num(-1.0))


def random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[float], float]:
    """Logits and labels of varied content: sizes from one pixel up, ties (quantised or
    constant logits), ignored pixels, classes absent from labels or prediction."""
    g = torch.Generator().manual_seed(seed)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    n, k = pick(1, 2, 3, 5), pick(2, 3, 4, 7)
    h, w = pick((1, 1), (1, 3), (3, 3), (4, 7), (9, 11))
    scale = pick(0.05, 0.3, 1.0, 4.0)
    logits = scale * torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    style = pick("plain", "quantised", "constant", "float32", "skewed")
    if style == "quantised":
        logits = (logits * 4).round() / 4
    elif style == "constant":
        logits[0] = 0.5
    elif style == "float32":
        logits = logits.float()
    elif style == "skewed":
        logits[:, 0] += 2 * scale
    labels = torch.randint(0, k, (n, h, w), generator=g)
    if pick(True, False):
        labels[:, :, :] = torch.where(labels == k - 1, 0, labels)  # a class never labelled
    labels[torch.rand(n, h, w, generator=g) < pick(0.0, 0.1, 0.5)] = IGNORE
    if n > 1 and pick(True, False):
        labels[-1] = IGNORE
    grid = pick([0.0], [0.0, 0.05, 0.3], [0.02, 0.1, 0.2, 0.5], [0.5, 3.0, 1e3], [2.0, 0.1])
    return logits, labels, grid, pick(0.5, 1.0, 3.0)


@pytest.mark.parametrize("seed", range(120))
def test_same_as_the_sort_per_class(seed: int) -> None:
    logits, labels, grid, lip = random_batch(seed)
    old = old_iou_profile(logits, labels, lip, grid, ignore_index=IGNORE)
    new = joint.iou_profile(logits, labels, lip, grid, ignore_index=IGNORE, kappa=KAPPA)
    assert_same(old, new)
    # shards computed apart and concatenated give the batch's profile, hence its bound
    parts = [
        joint.iou_profile(logits[i : i + 1], labels[i : i + 1], lip, grid, ignore_index=IGNORE)
        for i in range(logits.shape[0])
    ]
    merged = joint.IoUProfile.cat(parts)
    for name in ("tp", "fn", "fp", "labelled", "choices", "steps", "flips"):
        assert torch.equal(getattr(merged, name), getattr(new, name)), name
    assert torch.equal(
        joint.dataset_iou_lower_bound(merged).nan_to_num(-1.0),
        old_dataset_iou_lower_bound(old).nan_to_num(-1.0),
    )


def test_same_without_ignore_index_and_with_non_finite_logits() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    logits[0, 1, 0, 0] = -math.inf
    logits[1, :, 2, 2] = math.nan
    logits[2, 3, 1, 1] = math.inf
    labels = torch.randint(0, 4, (3, 5, 6), generator=g)
    for grid in ([0.0, 0.4], [1e3]):
        old = old_iou_profile(logits, labels, 1.0, grid, ignore_index=None)
        assert_same(old, joint.iou_profile(logits, labels, 1.0, grid, ignore_index=None))


def test_larger_images_where_many_pixels_fit_the_budget() -> None:
    g = torch.Generator().manual_seed(11)
    logits = 0.5 * torch.randn(2, 5, 24, 32, generator=g, dtype=torch.float64)
    logits[:, 2] += 0.6  # one dominant class: many cheap true positives of it
    labels = torch.where(torch.rand(2, 24, 32, generator=g) < 0.7, 2, 1)
    labels[:, :3] = IGNORE
    grid = [0.0, 0.1, 0.3, 0.6, 1.2]
    assert_same(
        old_iou_profile(logits, labels, 1.0, grid), joint.iou_profile(logits, labels, 1.0, grid)
    )
    # more than the first guess's 1024 cheapest gaps fit (twice), or all of them
    for scale, grid in ((0.05, [0.05, 0.5, 2.0]), (0.001, [2.0])):
        logits = scale * torch.randn(2, 3, 48, 64, generator=g)
        labels = torch.randint(0, 3, (2, 48, 64), generator=g)
        labels[0, :5] = IGNORE
        old = old_iou_profile(logits, labels, 1.0, grid)
        assert_same(old, joint.iou_profile(logits, labels, 1.0, grid))


def test_costs_exactly_at_the_budget_and_extreme_scales() -> None:
    g = torch.Generator().manual_seed(13)
    # gaps in halves and kappa = 0: sums of costs land exactly on the budgets
    logits = torch.randint(0, 5, (3, 4, 6, 7), generator=g).double() / 2
    labels = torch.randint(0, 4, (3, 6, 7), generator=g)
    for dtype in (torch.float64, torch.float32):
        for grid in ([0.5, 1.0, 2**-0.5], [0.25, 1.5]):
            old = old_iou_profile(logits.to(dtype), labels, 1.0, grid, kappa=0.0)
            assert_same(old, joint.iou_profile(logits.to(dtype), labels, 1.0, grid, kappa=0.0))
    # tiny and huge logits, up to float32's overflow (gaps of 6e38 are inf in float32)
    base = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 5, 5), generator=g)
    for scale, dtype, grid in (
        (1e-30, torch.float64, [0.0, 1e-31, 1e-29]),
        (1e-160, torch.float64, [1e-161, 1e-159]),  # budgets below the normal floats
        (1e20, torch.float64, [1e19, 1e21]),
        (1e30, torch.float32, [1e29, 1e31]),
        (1.5e38, torch.float32, [1.0, 1e38]),
    ):
        logits = (base.clamp(-2, 2) * scale).to(dtype)
        assert_same(
            old_iou_profile(logits, labels, 1.0, grid), joint.iou_profile(logits, labels, 1.0, grid)
        )


@pytest.mark.parametrize(
    ("gap", "dtype"),
    [(1.414213562373095, torch.float64), (1.4142135381698608, torch.float32)],
)
def test_a_join_that_costs_just_under_the_budget(gap: float, dtype: torch.dtype) -> None:
    # B = 1; the largest gap whose cost gap^2 / 2 still fits, once alone and once after a
    # free join (a tie); one step more would not fit
    logits = torch.tensor([[[[0.0, 0.0, 1.0, 0.0]], [[-gap, 0.0, 0.0, -5.0]]]], dtype=dtype)
    labels = torch.tensor([[[0, 0, 1, 0]]])
    assert float(logits[0, 0, 0, 0] - logits[0, 1, 0, 0]) ** 2 / 2 <= 1.0
    old = old_iou_profile(logits, labels, 1.0, [1.0], kappa=0.0)
    new = joint.iou_profile(logits, labels, 1.0, [1.0], kappa=0.0)
    assert_same(old, new)
    assert int(old.flips[0, 0, 1, 0]) == 2
    nudged = logits.clone()
    nudged[0, 1, 0, 0] = -torch.nextafter(
        torch.tensor(gap, dtype=dtype), torch.tensor(2.0, dtype=dtype)
    )
    old = old_iou_profile(nudged, labels, 1.0, [1.0], kappa=0.0)
    assert_same(old, joint.iou_profile(nudged, labels, 1.0, [1.0], kappa=0.0))
    assert int(old.flips[0, 0, 1, 0]) == 1


def test_a_float32_gap_that_rounds_up_past_the_budget() -> None:
    # top 1 and -0.41421348: the real gap lies a quarter step below a float32, which rounds
    # up to it, above sqrt(2 B); the float64 cost still fits in B
    v = torch.tensor(1.4142135, dtype=torch.float32)
    logits = torch.tensor([[[[1.0, 0.0]], [[-(float(v) - 1 - 2.0**-25), -5.0]]]])
    assert logits.dtype == torch.float32
    gap = float(logits[0, 0, 0, 0]) - float(logits[0, 1, 0, 0])
    assert gap == float(v) - 2.0**-25 and float(logits[0, 0, 0, 0] - logits[0, 1, 0, 0]) == v
    eps = math.sqrt(gap**2 / 2) * (1 + 1e-15)
    assert float(v) > math.sqrt(2) * eps * (1 + 1e-8)
    labels = torch.zeros(1, 1, 2, dtype=torch.int64)
    old = old_iou_profile(logits, labels, 1.0, [eps], kappa=0.0)
    assert int(old.flips[0, 0, 1, 0]) == 1
    assert_same(old, joint.iou_profile(logits, labels, 1.0, [eps], kappa=0.0))


def test_dataset_bound_is_remembered_per_profile_and_tolerance() -> None:
    logits, labels, grid, lip = random_batch(3)
    profile = joint.iou_profile(logits, labels, lip, grid, ignore_index=IGNORE)
    first = joint.dataset_iou_lower_bound(profile)
    first.fill_(2.0)  # a caller's copy: the remembered bound is not touched
    again = joint.dataset_iou_lower_bound(profile)
    old = old_dataset_iou_lower_bound(old_iou_profile(logits, labels, lip, grid))
    assert torch.equal(again.nan_to_num(-1.0), old.nan_to_num(-1.0))
    coarse = joint.dataset_iou_lower_bound(profile, tol=1e-3)
    assert set(profile._bounds) == {1e-6, 1e-3}
    assert bool((coarse.nan_to_num(0.0) <= again.nan_to_num(0.0) + 1e-3).all())
    # the memo is no field: equality and the store see the same profile as before
    names = {f.name for f in dataclasses.fields(profile)}
    assert "_bounds" not in names and "_group" not in names


@pytest.mark.parametrize("value", [0.0, math.nan, math.inf])
def test_guesses_that_fall_short_are_extended(monkeypatch: pytest.MonkeyPatch, value) -> None:
    calls = []

    def nothing(guess):
        def guessed(*args):
            calls.append(guess.__name__)
            return torch.full_like(guess(*args), value)

        return guessed

    # a first cut at cost 0 is too short wherever anything more is affordable; a NaN or an
    # infinite one means every cost up to the largest budget
    monkeypatch.setattr(joint, "histogram_guess", nothing(joint.histogram_guess))
    monkeypatch.setattr(joint, "topk_guess", nothing(joint.topk_guess))
    for seed in (4, 9, 17, 33):
        logits, labels, grid, lip = random_batch(seed)
        new = joint.iou_profile(logits, labels, lip, grid, ignore_index=IGNORE)
        assert_same(old_iou_profile(logits, labels, lip, grid), new)
    g = torch.Generator().manual_seed(5)
    logits = 0.5 * torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    grid = [0.3, 0.9]
    assert_same(
        old_iou_profile(logits, labels, 1.0, grid), joint.iou_profile(logits, labels, 1.0, grid)
    )
    assert set(calls) == {"histogram_guess", "topk_guess"}


def test_profile_with_a_remembered_bound_round_trips_through_the_store() -> None:
    logits, labels, grid, lip = random_batch(21)
    profile = joint.iou_profile(logits, labels, lip, grid, ignore_index=IGNORE)
    bound = joint.dataset_iou_lower_bound(profile)
    tree, tensors = store.encode(profile)
    assert set(tree["fields"]) == {f.name for f in dataclasses.fields(joint.IoUProfile)}
    back = store.decode(tree, tensors)
    assert "_bounds" not in vars(back)
    for f in dataclasses.fields(joint.IoUProfile):
        assert torch.equal(getattr(back, f.name), getattr(profile, f.name)), f.name
    assert torch.equal(joint.dataset_iou_lower_bound(back).nan_to_num(-1), bound.nan_to_num(-1))


def test_top2_margin_remembers_the_last_logits_only_while_they_are_unchanged() -> None:
    from audit.certify.margins import top2_margin

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    first_pred, first_margin = top2_margin(logits)
    expected = (first_pred.clone(), first_margin.clone())
    first_pred.fill_(3)  # a caller changing what it got back
    first_margin.fill_(-1.0)
    pred, margin = top2_margin(logits)
    assert torch.equal(pred, expected[0]) and torch.equal(margin, expected[1])
    logits[0, 0] += 100.0  # in place: the remembered result no longer holds
    pred, margin = top2_margin(logits)
    fresh = top2_margin(logits.clone())
    assert torch.equal(pred, fresh[0]) and torch.equal(margin, fresh[1])
    assert bool((pred[0] == 0).all())


def full_sort_prefix_counts(costs: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """The counts as they were computed before :mod:`audit.certify.cheapest`: a sort of every
    whole row, its running sums, and a search per budget."""
    cumulative = costs.sort(dim=1).values.cumsum(dim=1)
    values = budget.unsqueeze(0).expand(costs.shape[0], -1).contiguous()
    return torch.searchsorted(cumulative, values, right=True)


@pytest.mark.parametrize("seed", range(40))
def test_prefix_counts_equal_a_full_sort(seed: int) -> None:
    """Pixel-accuracy and fraction counts sort only the costs within the largest budget; the
    counts must be a full sort's, on rows with non-candidates, ties, zeros and budgets from
    nothing to more than every cost."""
    g = torch.Generator().manual_seed(seed)
    n, p = (
        int(torch.randint(1, 5, (1,), generator=g)),
        int(torch.randint(1, 400, (1,), generator=g)),
    )
    margin = torch.rand(n, p, generator=g, dtype=torch.float64) ** 3
    costs = (margin * 8).round() / 8 if seed % 3 == 0 else margin.square() / 2  # ties
    costs = torch.where(torch.rand(n, p, generator=g) < 0.3, math.inf, costs)
    costs[:, : seed % 4] = 0.0
    if seed % 5 == 0:
        costs[0] = math.inf  # a row without a candidate
    total = float(costs.nan_to_num(posinf=0.0).sum())
    budget = torch.cat(
        [
            torch.tensor([0.0, total + 1.0], dtype=torch.float64),
            torch.rand(6, generator=g, dtype=torch.float64) * total / n,
        ]
    )
    got = cheapest.prefix_counts(costs, budget)
    assert torch.equal(got, full_sort_prefix_counts(costs, budget))
    assert cheapest.prefix_counts(costs, budget[:0]).shape == (n, 0)


@pytest.mark.parametrize("first", [1, 7, 150])
def test_prefix_counts_take_more_costs_while_a_row_may_fit_more(monkeypatch, first) -> None:
    monkeypatch.setattr(cheapest, "FIRST_TAKE", first)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        costs = torch.rand(3, 500, generator=g, dtype=torch.float64) ** 4
        costs[1, ::3] = math.inf
        budget = torch.tensor([0.0, 1e-4, 0.01, 0.5, 3.0, 1e9], dtype=torch.float64)
        got = cheapest.prefix_counts(costs, budget)
        assert torch.equal(got, full_sort_prefix_counts(costs, budget))


@pytest.mark.parametrize("seed", range(12))
def test_individual_certificates_are_counted_as_is_certified_says(seed: int) -> None:
    """Column 0 of the fraction counts comes from a histogram over the sorted grid; it must
    equal counting ``is_certified`` pixel by pixel, for unsorted grids with repeats, exact
    ties at a radius, NaN and infinite logits and a mask."""
    from audit.certify.margins import certified_radius, is_certified

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 9, 11, generator=g, dtype=torch.float64)
    logits[0, :, 0, :3] = torch.tensor([math.nan, math.inf, 1.0]).view(3, 1).expand(3, 4).T
    mask = torch.rand(3, 9, 11, generator=g) < 0.8
    radius = certified_radius(logits, 1.3)
    eps = [0.4, 0.0, 0.1, 0.4, float(radius[1, 2, 3]), 2.0][: 1 + seed % 6]
    counts = joint.certified_fraction_counts(logits, 1.3, eps, mask=mask)
    single = is_certified(logits, 1.3, eps).reshape(3, len(eps), -1)
    expected = (single & mask.reshape(3, 1, -1)).sum(-1)
    assert torch.equal(counts[..., 0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_profile_where_every_cost_fits_the_budget(dtype) -> None:
    """Tiny margins and a large radius: every break and join cost fits (the guess takes the
    whole row at once); the profile must still be the old one's."""
    g = torch.Generator().manual_seed(8)
    logits = (1e-3 * torch.randn(3, 5, 12, 10, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, 5, (3, 12, 10), generator=g)
    labels[0, :2] = IGNORE
    grid = [0.0, 0.05, 2.0]
    new = joint.iou_profile(logits, labels, 1.0, grid, ignore_index=IGNORE)
    assert_same(old_iou_profile(logits, labels, 1.0, grid), new)
    # a budget past the 1e37 that marks excluded gaps: each entry is checked again
    huge = [0.05, 1e38]
    new = joint.iou_profile(logits, labels, 1.0, huge, ignore_index=IGNORE)
    assert_same(old_iou_profile(logits, labels, 1.0, huge), new)


@pytest.mark.parametrize("seed", range(20))
def test_counts_within_groups_equal_a_search_of_each_group(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(0, 6, (7,), generator=g)
    count[seed % 7] = 0
    costs = (torch.rand(int(count.sum()), generator=g, dtype=torch.float64) * 4).round() / 4
    owner = torch.repeat_interleave(torch.arange(7), count)
    sums = torch.cat([costs[owner == i].sort().values.cumsum(0) for i in range(7)] + [costs[:0]])
    group = torch.randint(0, 7, (40,), generator=g)
    values = (torch.rand(40, generator=g, dtype=torch.float64) * 8 - 1).round() / 2
    got = cheapest.count_at_most(sums, count, group, values)
    start = count.cumsum(0) - count
    expected = [
        int((sums[start[i] : start[i] + count[i]] <= v).sum())
        for i, v in zip(group, values, strict=True)
    ]
    assert got.tolist() == expected

"""Running sums of the cheapest costs under a budget: what a joint-budget attacker can afford.

Costs come in groups (an image, or an image's class); the attacker affords the cheapest of a
group first, so how much a budget buys is the number of the group's running sums, over its
costs sorted ascending, that stay within it.  :func:`cheapest_sums` computes those sums
sorting only the costs that can fit the largest budget (a first guess of the cut, extended
where it falls short), and each sum is the one a sequential ``cumsum`` of the group's whole
sorted row gives: a prefix does not depend on what follows.  So the counts are those of a
full sort, bit for bit, at a fraction of its cost when most costs are out of reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "Pair",
    "Selector",
    "cheapest_sums",
    "count_at_most",
    "histogram_guess",
    "prefix_counts",
    "topk_guess",
]

#: how many of a row's cheapest costs :func:`prefix_counts` takes first
FIRST_TAKE = 1024

Pair = tuple[torch.Tensor, torch.Tensor]
#: given a cost per group, the (group, cost) of at least all costs up to it
Selector = Callable[[torch.Tensor], Pair]


def cheapest_sums(select: Selector, guess: torch.Tensor, limit: torch.Tensor) -> Pair:
    """Per group, the running sums of its costs sorted ascending while ``<= limit`` (all
    groups' one after the other) and their number.  ``select(theta)`` gives the (group, cost)
    of at least every cost of group g ``<= theta[g]``, ``guess`` the first ``theta``.  Each
    sum is the one a sequential ``cumsum`` of the group's whole sorted row gives (a prefix
    does not depend on what follows), yet only costs up to ``theta`` are sorted; a group
    whose sums all fit is done again up to ``limit``, as its prefix may go on."""
    groups, guess = guess.numel(), guess.double()
    theta = torch.where(guess < limit, guess, limit)  # a NaN guess falls back to the limit
    while True:
        group, cost = select(theta)
        inside = cost <= theta[group]
        group, cost = group[inside], cost[inside]
        if bool((group[1:] < group[:-1]).any()):
            order = group.argsort(stable=True)  # groups together; costs sorted per row below
            group, cost = group[order], cost[order]
        size = torch.bincount(group, minlength=groups)
        rank = torch.arange(group.numel(), device=group.device) - (size.cumsum(0) - size)[group]
        # rows of similar length share a padded table, sorted row by row: work in proportion
        # to the costs, and no sort of all of them at once
        band = size.clamp(min=1).double().log2().ceil().long().masked_fill(size == 0, -1)
        sums = torch.empty_like(cost)
        for b in band[size > 0].unique().tolist():
            row = (band == b).long().cumsum(0) - 1
            member = (band == b)[group].nonzero().squeeze(1)
            at = (row[group[member]], rank[member])
            table = cost.new_full((int(row[-1]) + 1, int(size[band == b].max())), math.inf)
            table[at] = cost[member]
            sums[member] = table.sort(1).values.cumsum(1)[at]
        count = torch.bincount(group[sums <= limit], minlength=groups)
        short = (count == size) & (theta < limit)
        if not bool(short.any()):
            return sums[sums <= limit], count
        theta = torch.where(short, limit, theta)


def histogram_guess(
    group: torch.Tensor, cost: torch.Tensor, groups: int, limit: torch.Tensor
) -> torch.Tensor:
    """Per group, the end of the first bin by which its costs add up to more than ``limit``.
    Bins are even in ``sqrt(cost)``: cheap costs are dense (margins spread evenly)."""
    bins = 512
    level = (cost / max(float(limit), 1e-300)).sqrt().mul(bins).clamp(max=bins - 1).long()
    # index_add_, not a weighted bincount: CUDA has a deterministic one
    hist = cost.new_zeros(groups * bins).index_add_(0, group * bins + level, cost)
    over = hist.reshape(groups, bins).cumsum(1) > limit
    last = torch.where(over.any(1), over.int().argmax(1), bins - 1)
    return limit * ((last + 1).double() / bins).square()


def topk_guess(gaps: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """Per row of gaps, the cost ``gap^2 / 2`` by which the cheapest add up to more than
    ``limit``, from the smallest few (more where those do not add up); else ``limit``.
    Gaps of 1e37 are not costs (:func:`audit.certify.joint._join_costs` marks
    non-candidates so)."""
    theta = torch.full(gaps.shape[:1], float(limit), dtype=torch.float64, device=gaps.device)
    # Rows whose every cost fits together are done at once, with no topk over all of them.
    # A guess only saves work (the caller extends one that falls short), so float32 will
    # do: there the non-candidates' 1e37 squares to inf, which is dropped with NaN.
    squares = torch.nan_to_num(gaps.float().square(), nan=0.0, posinf=0.0)
    todo = (squares.sum(1) / 2 > limit).nonzero().squeeze(1)
    m = 1024
    while todo.numel():
        m = min(m, gaps.shape[1])
        rows = gaps if todo.numel() == gaps.shape[0] else gaps[todo]
        cost = rows.topk(m, dim=1, largest=False).values.double().square() / 2
        over = cost.cumsum(1) > limit
        hit = over.any(1)
        first = cost[hit].gather(1, over[hit].int().argmax(1, keepdim=True))[:, 0]
        theta[todo[hit]] = first * (1 + 1e-4)  # the float64 cost may round above the guess
        todo, cost = todo[~hit], cost[~hit]
        if m == gaps.shape[1] or not todo.numel():
            break
        m = _next_take(m, cost.sum(1), limit)
    return theta


def count_at_most(
    sums: torch.Tensor, count: torch.Tensor, group: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """For each ``values[j]``, how many of group ``group[j]``'s ``sums`` (laid out as
    :func:`cheapest_sums` returns them, ascending within each group) are ``<= values[j]``:
    a binary search of all the values at once, each within its group's run; float
    comparisons only, so exact."""
    start = count.cumsum(0) - count
    low, high = start[group], (start + count)[group]  # the answer lies in [low, high]
    for _ in range(int(count.max()).bit_length() if count.numel() else 0):
        middle = (low + high) // 2
        # middle < high, so middle indexes a sum of the group; an empty range stays empty
        fits = (middle < high) & (sums[middle.clamp(max=max(sums.numel() - 1, 0))] <= values)
        low = torch.where(fits, middle + 1, low)
        high = torch.where(fits, high, middle)  # middle == high when the range is empty
    return low - start[group]


def prefix_counts(costs: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Per row of ``costs`` (N x P, ``inf`` = not a candidate): how many of the cheapest
    candidates fit in each budget together; N x E int64.  The count a sort of each whole row
    and its running sums give, from the row's ``m`` smallest costs only (``topk``, several
    times cheaper than a sort while ``m`` is a fraction of the row), ``m`` grown until every
    row's ``m``-th running sum is over the largest budget, so none can fit more."""
    n, p = costs.shape
    e = budget.numel()
    if e == 0 or p == 0:
        return torch.zeros(n, e, dtype=torch.int64, device=costs.device)
    limit = budget.max()
    m = min(p, FIRST_TAKE)
    while True:
        if 2 * m >= p:
            m = p  # a topk of most of the row costs more than sorting it
        least = costs.sort(1).values if m == p else costs.topk(m, 1, largest=False).values
        sums = least.cumsum(1)
        short = sums[:, -1] <= limit
        if m == p or not bool(short.any()):
            break
        m = _next_take(m, sums[short, -1], limit)
    values = budget.unsqueeze(0).expand(n, -1).contiguous()
    return torch.searchsorted(sums, values, right=True)


def _next_take(m: int, taken: torch.Tensor, limit: torch.Tensor) -> int:
    """How many of a row's cheapest costs to take next, when the sums of the ``m`` taken
    (``taken``, per row still short) stay within ``limit``: the sum of the k cheapest grows
    about as k^3 (costs as margin^2, margins spread evenly), so the take grows by the cube
    root of the shortfall, between 2x and 16x."""
    grow = float((limit / taken.clamp(min=1e-300)).max()) ** (1 / 3)
    return int(m * min(16.0, max(2.0, 1.25 * grow)))

"""Lipschitz certificates: exact on a per-pixel linear model, brute force on tiny images.

A 1x1 convolution ``z_p = W x_p + b`` is the one model whose minimal adversarial perturbations
are known in closed form: pixel ``p`` leaves class ``y`` for ``j`` at exactly
``(z_y - z_j) / ||W_y - W_j||_2`` (pixels do not interact, the box [0, 1] is ignored and the
images stay well inside it), and the map from the image to all logits has Lipschitz constant
``||W||_2``.  The certificates must sit below those radii (soundness) and, for orthonormal rows,
match them up to ``1 + kappa`` (tightness).  The joint-budget metrics are checked against
brute force over all pixel subsets of tiny images, and against the reference's counterexample
to naive aggregation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audit import metrics
from audit.certify import joint, margins

KAPPA = 1e-3
IGNORE = 255


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The test machine has two busy cores; one thread keeps timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- linear model


def linear_logits(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits of the 1x1 convolution ``z_p = W x_p + b`` (float64)."""
    return torch.einsum("kc,nchw->nkhw", w, x) + b.view(1, -1, 1, 1)


def exact_change(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel: the exact minimal L2 perturbation that changes the prediction, the class
    that takes over, and the clean prediction (all N x H x W)."""
    z = linear_logits(w, b, x)
    y = z.argmax(1)
    gap = z.gather(1, y.unsqueeze(1)) - z
    dist = torch.cdist(w, w)[y].permute(0, 3, 1, 2)
    radius = torch.where(
        dist > 0, gap / dist.clamp(min=1e-300), torch.where(gap > 0, math.inf, 0.0)
    )
    own = torch.arange(w.shape[0]).view(1, -1, 1, 1) == y.unsqueeze(1)
    radius = torch.where(own, math.inf, radius)
    best, j = radius.min(1)
    return best, j, y


def spectral_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(w)[0])


def images(seed: int, n: int, c: int, h: int, wd: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, c, h, wd, generator=g, dtype=torch.float64)


def orthonormal_rows(seed: int, k: int, c: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    return scale * q[:k]


def test_lipschitz_of_the_linear_model_is_the_spectral_norm() -> None:
    """The unrolled operator image -> all logits is block diagonal in W: same top singular
    value, checked by an exact SVD of its Jacobian on a 3 x 4 image."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    x = images(2, 1, 3, 3, 4)
    jac = torch.autograd.functional.jacobian(lambda v: linear_logits(w, b, v).flatten(), x)
    unrolled = jac.reshape(5 * 12, 3 * 12)
    assert float(torch.linalg.svdvals(unrolled)[0]) == pytest.approx(spectral_norm(w), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 5, 19])
def test_certified_radius_is_below_the_exact_radius(seed: int, k: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(k, 3, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(k, generator=g, dtype=torch.float64)
    x = images(seed, 2, 3, 12, 12)
    exact, _, _ = exact_change(w, b, x)
    cert = margins.certified_radius(linear_logits(w, b, x), spectral_norm(w), kappa=KAPPA)
    assert cert.dtype == torch.float64
    ratio = exact / cert
    assert bool((ratio >= 1 + KAPPA - 1e-12).all()), float(ratio.min())
    # Random rows: looseness comes only from ||W_y - W_j|| < sqrt(2) ||W||; seen up to ~18x
    # for K = 19 on 3 channels, ~5x for K = 5 (median 2x).
    assert float(ratio.max()) < 100


@pytest.mark.parametrize("seed", range(4))
def test_certified_radius_is_tight_for_orthonormal_rows(seed: int) -> None:
    """With orthonormal rows, ||W_y - W_j|| = sqrt(2) ||W|| for every pair: the certificate
    is the exact radius divided by exactly 1 + kappa."""
    w = orthonormal_rows(seed, 3, 3, scale=4.0)
    b = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    x = images(seed, 2, 3, 10, 10)
    exact, _, _ = exact_change(w, b, x)
    cert = margins.certified_radius(linear_logits(w, b, x), spectral_norm(w), kappa=KAPPA)
    ratio = exact / cert
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 + KAPPA), rtol=1e-9, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(2, 4).flatmap(
        lambda k: st.integers(1, 4).flatmap(
            lambda c: arrays(np.float64, (k, c), elements=st.floats(-3, 3, width=64))
        )
    ),
    bias=st.lists(st.floats(-1, 1, width=64), min_size=4, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_certified_radius_is_sound_for_any_small_linear_model(
    w: np.ndarray, bias: list[float], seed: int
) -> None:
    """Soundness with kappa = 0 (the math alone), and the exact radius really flips."""
    weight = torch.from_numpy(w)
    lip = spectral_norm(weight)
    assume(lip > 1e-3)
    b = torch.tensor(bias[: w.shape[0]], dtype=torch.float64)
    x = images(seed, 1, w.shape[1], 3, 3)
    exact, j, y = exact_change(weight, b, x)
    z = linear_logits(weight, b, x)
    cert = margins.certified_radius(z, lip, kappa=0.0)
    assert bool((cert <= exact * (1 + 1e-9) + 1e-12).all())
    for eps in (0.0, 0.05, 0.5):
        assert torch.equal(margins.is_certified(z, lip, eps, kappa=0.0), cert > eps)
    # The closed form is achieved: stepping 1e-6 beyond it along W_j - W_y flips the pixel.
    finite = torch.isfinite(exact) & (exact > 0)
    direction = (weight[j] - weight[y]).permute(0, 3, 1, 2)
    unit = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-300)
    moved = linear_logits(weight, b, x + unit * (exact * (1 + 1e-6)).unsqueeze(1))
    assert bool((moved.argmax(1) != y)[finite].all())


# --------------------------------------------------------------------------- pixel accuracy


def constructive_attack(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal attack on the count of correct pixels of the linear model: flip the correct
    pixels of smallest exact radius first, each by its exact minimal perturbation (times
    1 + 1e-7), as many as ``||delta||_2 <= eps`` allows.  Returns the perturbation and the
    number of pixels it aims to flip per image."""
    exact, j, y = exact_change(w, b, x)
    n = x.shape[0]
    correct = (y == labels) & (labels != IGNORE)
    sq = torch.where(correct, exact.square(), math.inf).reshape(n, -1)
    order = sq.argsort(1)
    spent = sq.gather(1, order).cumsum(1) * (1 + 1e-7) ** 2
    chosen_sorted = spent <= eps**2
    chosen = torch.zeros_like(chosen_sorted).scatter(1, order, chosen_sorted).reshape(exact.shape)
    direction = (w[j] - w[y]).permute(0, 3, 1, 2)
    unit = direction / direction.norm(dim=1, keepdim=True)
    step = torch.where(chosen, exact * (1 + 1e-7), 0.0)
    return unit * step.unsqueeze(1), chosen.flatten(1).sum(1)


def noisy_labels(pred: torch.Tensor, seed: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = pred.clone()
    wrong = torch.rand(pred.shape, generator=g) < 0.2
    labels[wrong] = torch.randint(0, k, pred.shape, generator=g)[wrong]
    labels[torch.rand(pred.shape, generator=g) < 0.1] = IGNORE
    return labels


@pytest.mark.parametrize(("seed", "orthonormal"), [(0, True), (1, True), (2, False), (3, False)])
def test_joint_pixel_accuracy_holds_against_the_optimal_linear_attack(
    seed: int, orthonormal: bool
) -> None:
    k = 3
    if orthonormal:
        w = orthonormal_rows(seed, k, 3, scale=3.0)
    else:
        w = torch.randn(k, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    b = torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64)
    x = images(seed, 3, 3, 12, 12)
    z = linear_logits(w, b, x)
    labels = noisy_labels(z.argmax(1), seed, k)
    lip = spectral_norm(w)
    grid = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0]
    counts = joint.certified_pixel_accuracy_counts(z, labels, lip, grid, ignore_index=IGNORE)
    clean = ((z.argmax(1) == labels) & (labels != IGNORE)).flatten(1).sum(1)
    for e, eps in enumerate(grid):
        delta, aimed = constructive_attack(w, b, x, labels, eps)
        assert bool((delta.flatten(1).norm(dim=1) <= eps * (1 + 1e-12)).all())
        attacked = linear_logits(w, b, x + delta).argmax(1)
        still = ((attacked == labels) & (labels != IGNORE)).flatten(1).sum(1)
        assert torch.equal(clean - still, aimed)  # the attack is real: every aimed pixel flips
        assert bool((still >= counts[:, e, 0]).all()), (eps, still, counts[:, e, 0])
        if orthonormal:
            # same costs up to (1 + kappa)^2: the certificate is met or missed by a pixel or so
            assert bool((still - counts[:, e, 0] <= 2).all()), (eps, still, counts[:, e, 0])


def test_pixel_accuracy_curve_properties() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 5, 16, 16, generator=g)
    labels = noisy_labels(logits.argmax(1), 7, 5)
    grid = [0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 10.0]
    counts = joint.certified_pixel_accuracy_counts(logits, labels, 1.5, grid, ignore_index=IGNORE)
    assert counts.shape == (4, len(grid), 2)
    assert counts.dtype == torch.int64
    # eps = 0: clean pixel accuracy (continuous logits have no ties)
    keep = labels != IGNORE
    clean = ((logits.argmax(1) == labels) & keep).flatten(1).sum(1)
    assert torch.equal(counts[:, 0, 0], clean)
    assert torch.equal(counts[:, :, 1], keep.flatten(1).sum(1, keepdim=True).expand(-1, len(grid)))
    # monotone in eps, down to nothing at a huge budget
    assert bool((counts[:, 1:, 0] <= counts[:, :-1, 0]).all())
    assert bool((counts[:, -1, 0] == 0).all())
    # one sort for the grid == one call per epsilon, in any order
    for e, eps in enumerate(grid):
        alone = joint.certified_pixel_accuracy_counts(logits, labels, 1.5, [eps])
        assert torch.equal(alone[:, 0], counts[:, e])
    reverse = joint.certified_pixel_accuracy_counts(logits, labels, 1.5, grid[::-1])
    assert torch.equal(reverse.flip(1), counts)


def test_certified_fraction_individual_vs_joint() -> None:
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 4, 10, 10, generator=g, dtype=torch.float64)
    grid = [0.0, 0.1, 0.3, 1.0]
    counts = joint.certified_fraction_counts(logits, 2.0, grid)
    single = margins.is_certified(logits, 2.0, grid, kappa=KAPPA)
    assert torch.equal(counts[..., 0], single.flatten(2).sum(-1))
    assert bool((counts[..., 1] >= counts[..., 0]).all())
    assert bool((counts[:, 1:, :2] <= counts[:, :-1, :2]).all())
    assert bool((counts[..., 2] == 100).all())
    assert torch.equal(counts[:, 0, 1], counts[:, 0, 2])


def test_robustness_at_alpha() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 5, 4, generator=g)
    lip = 2.0
    radii = margins.certified_radius(logits, lip, kappa=KAPPA).flatten(1)
    # one pixel out of 20: the smallest per-pixel radius
    one = joint.robustness_at_alpha(logits, lip, 1 / 20, kappa=KAPPA)
    torch.testing.assert_close(one, radii.min(1).values, rtol=1e-12, atol=0)
    # a fraction: the eps whose budget covers the ceil(alpha n) cheapest pixels together
    half = joint.robustness_at_alpha(logits, lip, 0.5, kappa=KAPPA)
    expected = radii.sort(1).values[:, :10].square().sum(1).sqrt()
    torch.testing.assert_close(half, expected, rtol=1e-12, atol=0)
    # consistent with the joint fraction: just below it, fewer than 10 pixels can flip
    counts = joint.certified_fraction_counts(logits, lip, (half * (1 - 1e-9)).tolist())
    flippable = 20 - counts[torch.arange(2), torch.arange(2), 1]
    assert bool((flippable < 10).all())
    assert torch.equal(joint.robustness_at_alpha(logits, lip, 0.0), torch.zeros(2).double())


# --------------------------------------------------------------------------- IoU, brute force


def brute_pairs(z: np.ndarray, lab: np.ndarray, k: int, budget: float) -> set[tuple[int, int]]:
    """Every (tp', tp' + fp' + fn') the budget model allows for class k of one image, by
    enumerating all subsets of breakable true positives and joinable true negatives."""
    z, lab = z.reshape(z.shape[0], -1), lab.reshape(-1)
    pred = z.argmax(0)
    keep = lab != IGNORE
    truth, said = keep & (lab == k), keep & (pred == k)
    tp, fn, fp, tn = truth & said, truth & ~said, keep & ~truth & said, keep & ~truth & ~said
    others = np.delete(z, k, axis=0).max(0)
    cost = np.where(tp, (z[k] - others) ** 2 / 2, (others - z[k]) ** 2 / 2)
    cand = np.flatnonzero(tp | tn)
    pairs = set()
    for r in range(len(cand) + 1):
        for subset in itertools.combinations(cand, r):
            idx = list(subset)
            if cost[idx].sum() <= budget:
                broken, joined = int(tp[idx].sum()), int(tn[idx].sum())
                pairs.add((int(tp.sum()) - broken, int((tp | fp | fn).sum()) + joined))
    return pairs


def min_ratio(pairs: set[tuple[int, int]]) -> float:
    ratios = [a / d for a, d in pairs if d > 0]
    return min(ratios) if ratios else math.nan


def tiny_batch(seed: int, n: int, k: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < 0.1] = IGNORE
    return logits, labels


@pytest.mark.parametrize("seed", range(8))
def test_worst_case_iou_matches_brute_force_per_image(seed: int) -> None:
    lip, grid = 1.0, [0.0, 0.2, 0.5, 0.9, 1.5]
    logits, labels = tiny_batch(seed, 2, 3, 3, 3)
    worst = joint.worst_case_iou_counts(logits, labels, lip, grid, ignore_index=IGNORE)
    assert worst.shape == (2, len(grid), 3, 2)
    for i, (e, eps), k in itertools.product(range(2), enumerate(grid), range(3)):
        budget = (lip * (1 + KAPPA) * eps) ** 2
        pairs = brute_pairs(logits[i].numpy(), labels[i].numpy(), k, budget)
        tp, den = worst[i, e, k].tolist()
        assert (tp, den) in pairs
        expected = min_ratio(pairs)
        if math.isnan(expected):
            assert den == 0
        else:
            assert tp / den == pytest.approx(expected, abs=1e-15)
    # worst-case IoU only falls as eps grows
    ratio = worst[..., 0].double() / worst[..., 1].clamp(min=1).double()
    assert bool((ratio[:, 1:] <= ratio[:, :-1] + 1e-15).all())
    # per-image mean bound equals the brute-force mean of per-image minima
    mean = joint.mean_per_image_iou_lower_bound(worst)
    for (e, eps), k in itertools.product(enumerate(grid), range(3)):
        budget = (lip * (1 + KAPPA) * eps) ** 2
        mins = [
            min_ratio(brute_pairs(logits[i].numpy(), labels[i].numpy(), k, budget))
            for i in range(2)
        ]
        mins = [m for m in mins if not math.isnan(m)]
        expected = sum(mins) / len(mins) if mins else math.nan
        assert float(mean[e, k]) == pytest.approx(expected, abs=1e-12, nan_ok=True)


def brute_dataset_min(pair_sets: list[set[tuple[int, int]]]) -> float:
    best = math.nan
    for combo in itertools.product(*pair_sets):
        num, den = sum(p[0] for p in combo), sum(p[1] for p in combo)
        if den > 0 and not num / den >= best:
            best = num / den
    return best


@pytest.mark.parametrize("seed", range(16))
def test_dataset_iou_bound_matches_brute_force(seed: int) -> None:
    lip, grid = 1.0, [0.0, 0.3, 0.8, 1.5]
    n = 2 + seed % 2
    logits, labels = tiny_batch(1000 + seed, n, 3, 2, 3)
    profile = joint.iou_profile(logits, labels, lip, grid, ignore_index=IGNORE)
    bound = joint.dataset_iou_lower_bound(profile)
    assert bound.dtype == torch.float64
    for (e, eps), k in itertools.product(enumerate(grid), range(3)):
        budget = (lip * (1 + KAPPA) * eps) ** 2
        sets = [brute_pairs(logits[i].numpy(), labels[i].numpy(), k, budget) for i in range(n)]
        truth = brute_dataset_min(sets)
        got = float(bound[e, k])
        if math.isnan(truth):
            assert math.isnan(got)
        else:
            assert got <= truth
            assert truth - got <= 2e-6
    # concatenating per-image profiles gives the same answer as one batch
    parts = [joint.iou_profile(logits[i : i + 1], labels[i : i + 1], lip, grid) for i in range(n)]
    torch.testing.assert_close(joint.dataset_iou_lower_bound(joint.IoUProfile.cat(parts)), bound)
    # at eps = 0 the dataset mIoU bound is the clean dataset mIoU; it falls with eps
    miou = joint.certified_miou_lower_bound(profile)
    cm = metrics.per_image_confusion(logits.argmax(1), labels, 3, IGNORE).sum(0)
    assert float(miou[0]) == pytest.approx(float(metrics.miou(cm)), abs=2e-6)
    assert float(miou[0]) <= float(metrics.miou(cm))
    assert bool((miou[1:] <= miou[:-1] + 2e-6).all())
    per_image = joint.certified_miou_lower_bound(profile, aggregation="per_image")
    clean_iou = metrics.class_iou(metrics.per_image_confusion(logits.argmax(1), labels, 3))
    expected = np.nanmean(np.nanmean(clean_iou, axis=0))
    assert float(per_image[0]) == pytest.approx(float(expected), abs=1e-12)
    assert bool((per_image[1:] <= per_image[:-1] + 1e-12).all())


def counterexample() -> tuple[torch.Tensor, torch.Tensor]:
    """Reference section 3, class 1, L = 1, eps = 1, kappa = 0, so B = 1.

    Image A (10 x 10): one true positive whose break costs 0.995, and 99 true negatives whose
    join costs 0.01 each: it can reach 1/100 (join all 99) or 0/1 (break the TP, nothing left
    for joins).  Image B: 50 true positives and 50 false positives, all far too expensive to
    move: fixed at 50/100.
    """
    a = torch.zeros(2, 100, dtype=torch.float64)
    a[:, 0] = torch.tensor([0.0, math.sqrt(2 * 0.995)])  # the TP, label 1
    a[0, 1:] = math.sqrt(2 * 0.01)  # TNs, label 0
    labels_a = torch.zeros(100, dtype=torch.int64)
    labels_a[0] = 1
    b = torch.zeros(2, 100, dtype=torch.float64)
    b[1] = 10.0  # everything predicted 1 with margin 10
    labels_b = torch.cat([torch.ones(50), torch.zeros(50)]).long()
    logits = torch.stack([a, b]).reshape(2, 2, 10, 10)
    return logits, torch.stack([labels_a, labels_b]).reshape(2, 10, 10)


def test_reference_counterexample_to_naive_aggregation() -> None:
    logits, labels = counterexample()
    profile = joint.iou_profile(logits, labels, 1.0, [1.0], kappa=0.0)
    worst = profile.worst_case_counts()[:, 0, 1]
    assert worst.tolist() == [[0, 1], [50, 100]]
    naive = float(worst[:, 0].sum() / worst[:, 1].sum())
    assert naive == pytest.approx(50 / 101)
    # image A's undominated choices (too many subsets to enumerate), image B's only one
    truth = brute_dataset_min([{(0, 1), (1, 100)}, {(50, 100)}])
    assert truth == pytest.approx(51 / 200)
    assert naive > truth  # summing per-image worst cases is NOT a lower bound
    bound = float(joint.dataset_iou_lower_bound(profile)[0, 1])
    assert truth - 1e-6 <= bound <= truth
    per_image = float(joint.mean_per_image_iou_lower_bound(profile.worst_case_counts())[0, 1])
    assert per_image == pytest.approx((0 + 0.5) / 2)


# --------------------------------------------------------------------------- precision


def test_refuses_autocast_and_half_precision() -> None:
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="autocast"):
            margins.top2_margin(logits)
        with pytest.raises(RuntimeError, match="autocast"):
            joint.certified_pixel_accuracy_counts(logits, labels, 1.0, [0.1])
    with pytest.raises(ValueError, match="too coarse"):
        margins.certified_radius(logits.half(), 1.0)
    with pytest.raises(ValueError, match="lipschitz"):
        margins.certified_radius(logits, 0.0)
    with pytest.raises(ValueError, match="epsilons"):
        joint.certified_pixel_accuracy_counts(logits, labels, 1.0, [-0.1])


def test_float64_throughout_and_non_finite_logits_certify_nothing() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, generator=g)  # float32 in
    labels = logits.argmax(1)
    pred, margin = margins.top2_margin(logits)
    assert margin.dtype == torch.float64
    top = logits.double().topk(2, dim=1).values
    assert torch.equal(margin, top[:, 0] - top[:, 1])
    assert torch.equal(pred, logits.argmax(1))
    assert joint.robustness_at_alpha(logits, 1.0, 0.5).dtype == torch.float64
    poisoned = logits.clone()
    poisoned[0, :, 1, 1] = math.nan
    assert not bool(margins.is_certified(poisoned, 1.0, 0.0)[0, 1, 1])
    counts = joint.certified_fraction_counts(poisoned, 1.0, [0.0])
    assert int(counts[0, 0, 0]) == 8
    pa = joint.certified_pixel_accuracy_counts(poisoned, labels, 1.0, [0.0])
    assert int(pa[0, 0, 0]) <= 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_results_on_cuda() -> None:
    logits, labels = tiny_batch(5, 3, 4, 8, 8)
    grid = [0.0, 0.2, 0.6]
    cpu = joint.iou_profile(logits, labels, 1.0, grid)
    gpu = joint.iou_profile(logits.cuda(), labels.cuda(), 1.0, grid)
    assert torch.equal(cpu.flips, gpu.flips.cpu())
    torch.testing.assert_close(
        joint.dataset_iou_lower_bound(cpu), joint.dataset_iou_lower_bound(gpu).cpu()
    )
    assert torch.equal(
        joint.certified_pixel_accuracy_counts(logits, labels, 1.0, grid),
        joint.certified_pixel_accuracy_counts(logits.cuda(), labels.cuda(), 1.0, grid).cpu(),
    )

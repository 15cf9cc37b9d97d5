"""Randomized smoothing (audit.certify.smoothing): statistics against SciPy and loop references,
end-to-end behaviour on toy models, and an empirical check of the family-wise guarantee."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from scipy import stats

from audit.certify.smoothing import (
    SmoothingConfig,
    SmoothingResult,
    binomial_sf_table,
    bonferroni_reject,
    certified_metrics,
    holm_reject,
    smoothing_certify,
)
from audit.errors import ConfigError, EvaluationError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on a busy 2-core machine: intra-op threads cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- references


def holm_loop(pvalues: list[float], alpha: float) -> list[bool]:
    """Textbook Holm: walk the sorted p-values, stop at the first that misses its level."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    rejected = [False] * m
    for rank, index in enumerate(order):
        if pvalues[index] <= alpha / (m - rank):
            rejected[index] = True
        else:
            break
    return rejected


def constant_model(cls: int, num_classes: int):
    def model(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], num_classes, *x.shape[2:])
        logits[:, cls] = 1.0
        return logits

    return model


def threshold_model(x: torch.Tensor) -> torch.Tensor:
    """Per pixel f_p(x) = 1[x_p > 0.5] on channel 0, so P(f_p(x + e) = 1) = Phi((x_p - 0.5) / sigma)
    with no approximation: the true smoothed probability is known in closed form."""
    z = x[:, 0] - 0.5
    return torch.stack([-z, z], dim=1)


# ------------------------------------------------------------------ p-values and corrections


@pytest.mark.parametrize(("n", "tau"), [(1, 0.5), (20, 0.5), (100, 0.75), (300, 0.9), (1000, 0.99)])
def test_pvalue_table_matches_scipy_binomtest(n: int, tau: float) -> None:
    table = binomial_sf_table(n, tau)
    assert table.dtype == torch.float64 and table.shape == (n + 1,)
    expected = torch.tensor(
        [stats.binomtest(k, n, tau, alternative="greater").pvalue for k in range(n + 1)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(table, expected, rtol=1e-9, atol=0.0)
    assert table[0] == 1.0
    assert math.isclose(float(table[n]), tau**n, rel_tol=1e-10)


def test_holm_matches_loop_reference_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    alpha, m = 0.05, 40
    # a coarse grid makes many ties; the exact Holm levels alpha/(m-i) test the "<=" edge
    grid = torch.tensor([alpha / (m - i) for i in range(m)] + [0.0, 1e-6, 0.01, 0.5, 1.0])
    rows = [grid[torch.randint(len(grid), (m,), generator=gen)] for _ in range(300)]
    rows += [torch.rand(m, generator=gen) * scale for scale in (1e-3, 1e-2, 0.05, 1.0)] * 20
    pvalues = torch.stack(rows).double()
    got = holm_reject(pvalues, alpha)
    expected = torch.tensor([holm_loop(row.tolist(), alpha) for row in pvalues])
    assert torch.equal(got, expected)
    # the test has bite: partial rejections, full rejections and none all occur
    per_row = got.sum(1)
    assert (per_row == 0).any() and (per_row == m).any() and ((per_row > 0) & (per_row < m)).any()


def test_holm_exact_levels_and_stop_at_first_failure() -> None:
    alpha, m = 0.1, 4
    exact = torch.tensor([[alpha / (m - i) for i in range(m)]], dtype=torch.float64)
    assert holm_reject(exact, alpha).all()
    # the smallest misses alpha/4: nothing is rejected, even p-values below later levels
    stuck = torch.tensor([[0.026, 0.03, 0.04, 0.05]], dtype=torch.float64)
    assert not holm_reject(stuck, alpha).any()
    # rows are separate families
    both = torch.cat([exact, stuck])
    assert holm_reject(both, alpha).sum(1).tolist() == [4, 0]


def test_bonferroni() -> None:
    gen = torch.Generator().manual_seed(1)
    alpha, m = 0.05, 50
    pvalues = (torch.rand(20, m, generator=gen, dtype=torch.float64) * 4 * alpha / m).clone()
    pvalues[0, 0] = alpha / m  # the edge is included
    got = bonferroni_reject(pvalues, alpha)
    expected = torch.tensor([[p <= alpha / m for p in row] for row in pvalues.tolist()])
    assert torch.equal(got, expected)
    assert bool(got[0, 0])
    # Holm rejects at least what Bonferroni rejects
    assert bool((holm_reject(pvalues, alpha) | ~got).all())


# ------------------------------------------------------------------------------ the config


def test_ceiling_refused_with_numbers_and_a_fix() -> None:
    pixels = 512 * 1024
    with pytest.raises(ConfigError) as info:
        SmoothingConfig(n=100, tau=0.9, alpha=1e-3).validate(pixels)
    message = str(info.value)
    for needle in ("tau=0.9", "n=100", "524288", "0.001", "tau^n", "tau <= 0.818", "n >= 191"):
        assert needle in message, (needle, message)
    assert isinstance(info.value, ValueError)
    SmoothingConfig(n=100, tau=0.8, alpha=1e-3).validate(pixels)
    SmoothingConfig(n=100, tau=0.818, alpha=1e-3).validate(pixels)
    SmoothingConfig(n=191, tau=0.9, alpha=1e-3).validate(pixels)
    with pytest.raises(ConfigError):
        SmoothingConfig(n=190, tau=0.9, alpha=1e-3).validate(pixels)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"tau": 0.4}, "tau"),
        ({"tau": 1.0}, "tau"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"n": 0}, "n"),
        ({"n0": 0}, "n0"),
        ({"n": 10.5}, "n"),
        ({"n": True}, "n"),
        ({"batch": 0}, "batch"),
        ({"correction": "bh"}, "correction"),
    ],
)
def test_config_ranges(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'") as info:
        SmoothingConfig(**changes).validate(64)
    assert repr(next(iter(changes.values()))) in str(info.value)


def test_radius_and_pass_count() -> None:
    config = SmoothingConfig(sigma=0.25, tau=0.75)
    assert math.isclose(config.radius, 0.25 * stats.norm.ppf(0.75), rel_tol=1e-12)
    assert SmoothingConfig(tau=0.5).radius == 0.0
    assert SmoothingConfig(n0=10, n=100, batch=16).forward_passes(1) == 7
    assert SmoothingConfig(n0=10, n=100, batch=16).forward_passes(4) == 28  # 440 copies
    assert SmoothingConfig(n0=5, n=20, batch=7).forward_passes(3) == 11  # 75 copies


# -------------------------------------------------------------------------- end to end


def test_constant_model_certifies_everything() -> None:
    images = torch.rand(2, 3, 8, 8)
    config = SmoothingConfig()  # n = 100, tau = 0.75, alpha = 1e-3, Holm
    result = smoothing_certify(
        constant_model(2, 4), images, config, generator=torch.Generator(), num_classes=4
    )
    assert result.prediction.dtype == torch.int64 and result.prediction.shape == (2, 8, 8)
    assert bool((result.prediction == 2).all())
    assert bool((result.counts == 100).all())
    assert result.pvalues.dtype == torch.float64
    torch.testing.assert_close(
        result.pvalues, torch.full((2, 8, 8), 0.75**100, dtype=torch.float64)
    )
    assert math.isclose(result.radius, 0.25 * NormalDist().inv_cdf(0.75))
    assert result.forward_passes == 14


def test_noise_model_abstains() -> None:
    noise = torch.Generator().manual_seed(5)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape[0], 4, *x.shape[2:], generator=noise)

    result = smoothing_certify(
        model, torch.rand(2, 3, 8, 8), SmoothingConfig(), generator=torch.Generator(), num_classes=4
    )
    assert (result.prediction == -1).double().mean() >= 0.99
    assert result.counts.double().mean() < 40  # about n / 4 for the chosen class


def test_selection_ties_go_to_the_lowest_class() -> None:
    """Selection copies alternate classes 3 and 1 (5 each): class 1 must win the tie; every
    test copy says 1, so a wrong choice (3) would abstain everywhere."""
    n0, n = 10, 20
    seen = [0]

    def model(x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(seen[0], seen[0] + x.shape[0])
        seen[0] += x.shape[0]
        cls = torch.where((rows < n0) & (rows % 2 == 0), 3, 1)
        logits = torch.zeros(x.shape[0], 5, *x.shape[2:])
        logits[torch.arange(x.shape[0]), cls] = 1.0
        return logits

    config = SmoothingConfig(n0=n0, n=n, tau=0.5, alpha=1e-3, batch=4)
    result = smoothing_certify(
        model, torch.rand(1, 3, 4, 4), config, generator=torch.Generator(), num_classes=5
    )
    assert bool((result.prediction == 1).all())
    assert bool((result.counts == n).all())


def test_certify_applies_the_correction_to_the_tabulated_pvalues() -> None:
    """On a model with borderline pixels, the output is exactly: p = sf[n_p], then the
    correction over each image's pixels (catches an uncorrected or mis-wired test)."""
    x = torch.linspace(0.5, 0.9, 64).view(1, 1, 8, 8).expand(3, 3, 8, 8).contiguous()
    for correction, reject in (("holm", holm_reject), ("bonferroni", bonferroni_reject)):
        config = SmoothingConfig(sigma=0.25, n=60, n0=6, tau=0.6, alpha=0.05, correction=correction)
        result = smoothing_certify(
            threshold_model, x, config, generator=torch.Generator().manual_seed(3), num_classes=2
        )
        table = binomial_sf_table(config.n, config.tau)
        assert torch.equal(result.pvalues, table[result.counts])
        expected = reject(result.pvalues.reshape(3, -1), config.alpha).reshape(3, 8, 8)
        assert torch.equal(result.prediction >= 0, expected)
        # not a trivial case: some pixels certified, some abstaining, in each image
        assert bool(expected.flatten(1).any(1).all()) and not bool(expected.flatten(1).all(1).any())


def test_deterministic_for_a_seed_and_global_rng_untouched() -> None:
    x = torch.linspace(0.45, 0.75, 48).view(1, 1, 6, 8).expand(2, 3, 6, 8).contiguous()
    config = SmoothingConfig(sigma=0.25, n=50, n0=5, tau=0.6, alpha=0.1, batch=8)
    state = torch.random.get_rng_state()

    def run(seed: int) -> SmoothingResult:
        gen = torch.Generator().manual_seed(seed)
        return smoothing_certify(threshold_model, x, config, generator=gen, num_classes=2)

    first, second, other = run(7), run(7), run(8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.prediction, second.prediction)
    assert torch.equal(first.counts, second.counts)
    assert torch.equal(first.pvalues, second.pvalues)
    assert not torch.equal(first.counts, other.counts)


def test_forward_passes_fresh_unclipped_noise_no_grad_no_autocast() -> None:
    n0, n, batch, num = 5, 20, 7, 3
    calls: list[torch.Tensor] = []
    modes: list[tuple[bool, bool]] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.clone())
        modes.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype)

    images = torch.zeros(num, 3, 4, 4)
    images[1] = 1.0
    config = SmoothingConfig(sigma=0.3, n=n, n0=n0, tau=0.5, alpha=0.5, batch=batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = smoothing_certify(
            model, images, config, generator=torch.Generator().manual_seed(0), num_classes=2
        )
    total = num * (n0 + n)
    assert result.forward_passes == len(calls) == config.forward_passes(num) == 11
    assert [c.shape[0] for c in calls] == [batch] * (total // batch) + [total % batch]
    assert modes == [(False, False)] * len(calls)
    copies = torch.cat(calls).flatten(1)
    assert copies.dtype == torch.float32
    # every noisy copy has its own noise: no two of the 75 are equal
    assert torch.unique(copies, dim=0).shape[0] == total
    # images at 0 and 1 get noise on both sides: nothing was clipped into [0, 1]
    assert copies.min() < -0.3 and copies.max() > 1.3
    # copies come image by image; the noise has mean 0 and standard deviation sigma
    noise = copies - images.repeat_interleave(n0 + n, dim=0).flatten(1)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 0.3) < 0.02


def test_model_errors_are_evaluation_errors() -> None:
    images = torch.rand(1, 3, 4, 4)
    config = SmoothingConfig(n=30, n0=3, tau=0.5, alpha=0.1)
    gen = torch.Generator()
    with pytest.raises(EvaluationError, match="shape"):
        smoothing_certify(
            lambda x: torch.zeros(x.shape[0], 3, 2, 2), images, config, generator=gen, num_classes=3
        )
    with pytest.raises(EvaluationError, match="NaN"):
        smoothing_certify(
            lambda x: torch.full((x.shape[0], 3, 4, 4), float("nan")),
            images,
            config,
            generator=gen,
            num_classes=3,
        )
    with pytest.raises(ValueError, match="N x C x H x W"):
        smoothing_certify(constant_model(0, 3), images[0], config, generator=gen, num_classes=3)
    with pytest.raises(ConfigError, match="tau\\^n"):
        smoothing_certify(
            constant_model(0, 3),
            images,
            SmoothingConfig(n=10, tau=0.9),
            generator=gen,
            num_classes=3,
        )


def test_certified_metrics_count_abstentions_as_errors() -> None:
    prediction = torch.tensor([[[0, 1, -1], [2, -1, 1]], [[-1, -1, -1], [0, 0, 0]]])
    labels = torch.tensor([[[0, 2, 1], [2, 255, 255]], [[0, 1, 255], [0, 1, 2]]])
    result = SmoothingResult(
        prediction=prediction,
        radius=0.1,
        pvalues=torch.zeros(2, 2, 3, dtype=torch.float64),
        forward_passes=1,
        counts=torch.zeros(2, 2, 3, dtype=torch.int64),
    )
    out = certified_metrics(result, labels, 255, num_classes=3)
    assert out["pixels"].tolist() == [6, 6]
    assert out["labelled"].tolist() == [4, 5]
    assert out["certified_correct"].tolist() == [2, 1]
    assert out["certified_wrong"].tolist() == [1, 2]
    assert out["abstain"].tolist() == [1, 2]
    assert out["abstain_all"].tolist() == [2, 3]
    total = out["certified_correct"] + out["certified_wrong"] + out["abstain"]
    assert torch.equal(total, out["labelled"])
    confusion = out["confusion"]
    assert confusion.shape == (2, 3, 4)
    assert confusion.sum((1, 2)).tolist() == [4, 5]
    assert confusion[0].tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0]]
    assert confusion[1].tolist() == [[1, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        certified_metrics(result, labels.clamp(max=3), 255, num_classes=3)
    no_ignore = certified_metrics(result, labels.clamp(max=2), None)
    assert no_ignore["labelled"].tolist() == [6, 6]


# ---------------------------------------------------------------------- the guarantee


@pytest.mark.slow
@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_familywise_guarantee_holds_empirically(correction: str) -> None:
    """P(some pixel whose smoothed probability is <= tau gets certified) <= alpha.

    The toy model thresholds each pixel at 0.5, so with Gaussian noise the probability that
    pixel p says class 1 is q_p = Phi((x_p - 0.5) / sigma) exactly, and pixels are
    independent.  16 "null" pixels sit at q = 0.745 < tau = 0.75 (neither class exceeds tau:
    certifying one is an error); 48 "easy" pixels at q = Phi(4) must all be certified, which
    also makes Holm step down to alpha/16 for the nulls.  R = 2000 images (40 seeds x 50
    images, each image its own family) at alpha = 0.1.

    Two checks: the error frequency is at most alpha (up to a 1e-4 binomial tail), and it
    matches the exact rate of a correct implementation (two-sided 1e-4 tails).  Broken on
    purpose while writing this test, the implementation failed it: no correction (1448 of
    2000 images with an error, bound 252), noise reused within a forward pass (1860 with
    Holm, 1830 with Bonferroni), and a p-value off by one count (P(X > n_p): 226 errors
    where 113 were expected; that one passes the <= alpha bound alone).
    """
    sigma, tau, alpha, n, n0 = 0.25, 0.75, 0.1, 100, 10
    n_null, n_easy, q_null = 16, 48, 0.745
    seeds, per_seed = 40, 50
    nd = NormalDist()
    row = [0.5 + sigma * nd.inv_cdf(q_null)] * n_null + [0.5 + 4 * sigma] * n_easy
    x = torch.tensor(row).view(1, 1, 8, 8).expand(per_seed, 3, 8, 8).contiguous()
    # the true probability of each class at each pixel, from the float32 image itself
    q = torch.tensor([nd.cdf((v - 0.5) / sigma) for v in x[0, 0].flatten().double().tolist()])
    truth = torch.stack([1 - q, q]).view(2, 8, 8)
    null = (truth <= tau).all(0)
    assert int(null.sum()) == n_null

    config = SmoothingConfig(sigma=sigma, n=n, n0=n0, tau=tau, alpha=alpha, correction=correction)
    errors = easy_missed = 0
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(10_000 + seed)
        result = smoothing_certify(threshold_model, x, config, generator=gen, num_classes=2)
        certified = result.prediction >= 0
        chosen_truth = truth.expand(per_seed, 2, 8, 8).gather(
            1, result.prediction.clamp(min=0).unsqueeze(1)
        )[:, 0]
        errors += int((certified & (chosen_truth <= tau)).flatten(1).any(1).sum())
        easy_missed += int((~certified[:, ~null]).sum())
    repeats = seeds * per_seed

    # exact error rate: a null pixel errs iff it selects class 1 (more than n0/2 votes; a tie
    # goes to class 0, which can never pass) and its count reaches the first null's level
    q0 = float(q[0])
    level = alpha / (n_null if correction == "holm" else n_null + n_easy)
    k_star = next(k for k in range(n + 1) if stats.binom.sf(k - 1, n, tau) <= level)
    per_pixel = stats.binom.sf(n0 // 2, n0, q0) * stats.binom.sf(k_star - 1, n, q0)
    rate = 1 - (1 - per_pixel) ** n_null
    assert rate <= alpha

    bound = stats.binom.ppf(1 - 1e-4, repeats, alpha)
    assert errors <= bound, f"{errors}/{repeats} images with a false certificate > alpha={alpha}"
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], repeats, rate)
    assert low <= errors <= high, f"{errors} errors, expected {rate * repeats:.1f} ({low}-{high})"
    # power: the easy pixels, and Holm's step-down the exact rate assumes
    assert easy_missed == 0, f"{easy_missed} easy pixels abstained"


def test_ceiling_never_suggests_a_tau_that_certifies_nothing() -> None:
    # with n = 10 even tau = 0.5 is too strict for 512 x 1024 pixels: 0.5^10 > alpha / K,
    # and a tau <= 0.5 would certify radius 0; only more samples help
    pixels = 512 * 1024
    with pytest.raises(ConfigError) as info:
        SmoothingConfig(n=10, tau=0.75, alpha=1e-3).validate(pixels)
    message = str(info.value)
    assert "tau <=" not in message and "use n >= 70" in message, message
    SmoothingConfig(n=70, tau=0.75, alpha=1e-3).validate(pixels)
    # where a lower tau works, its radius is given so the user sees what it buys
    with pytest.raises(ConfigError, match=r"tau <= 0\.818 \(radius 0\.227\) or n >= 191"):
        SmoothingConfig(n=100, tau=0.9, alpha=1e-3, sigma=0.25).validate(pixels)

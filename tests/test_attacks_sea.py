"""APGD and SEA: strength against exact optima, members and other libraries; per-image worst
case; determinism; the norm balls; claims, record and report.

Strength is checked on two models.  The per-pixel linear model has a closed-form optimum
(see test_attacks_native.py): nothing may beat it.  A small CNN trained for a few steps here
has no closed form, so there the ensemble is compared with every member run alone and with
torchattacks' and foolbox's PGD at the same epsilon and iterations per attack (the ensemble
spends members x iterations in all): mIoU under the ensemble <= the minimum over them + 0.005.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from audit import metrics
from audit.attacks import build_attack
from audit.attacks.base import AttackContext
from audit.attacks.sea import APGD, SEA, SEA_MEMBERS, Ensemble, image_scores
from audit.errors import ConfigError
from audit.suite import parse_suite
from audit.threat import ThreatModel, parse_epsilon
from tests.test_attacks_native import exact_flippable, linear_model

K = 4
IGNORE = 255
ITERATIONS = 10


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: torch's intra-op threads cost more than they save on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def context(model, num_classes: int = K, seed: int = 0, **kw: Any) -> AttackContext:
    return AttackContext(
        model=model,
        ignore_index=IGNORE,
        num_classes=num_classes,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def miou_of(model, adv: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    with torch.no_grad():
        pred = model(adv).argmax(1)
    return float(metrics.miou(metrics.confusion_matrix(pred, labels, num_classes, IGNORE)))


@pytest.fixture(scope="module")
def linear():
    conv = linear_model()
    gen = torch.Generator().manual_seed(1)
    images = 0.3 + 0.4 * torch.rand(4, 3, 8, 8, generator=gen)  # away from the [0, 1] edges
    with torch.no_grad():
        labels = conv(images).argmax(1)
    return conv, images, labels


@pytest.fixture(scope="module")
def cnn():
    """Two conv layers trained for 200 Adam steps on synthetic street scenes (seeded)."""
    from audit.data.synthetic import SyntheticStreetScenes

    data = SyntheticStreetScenes(8, seed=0, size=(32, 64))
    images = torch.stack([data[i].image for i in range(len(data))])
    masks = torch.stack([data[i].mask for i in range(len(data))])
    classes = len(data.class_names)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, classes, 1),
        )
        optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(200):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(images[:4]), masks[:4], ignore_index=IGNORE)
            loss.backward()
            optimiser.step()
    model.requires_grad_(False).eval()
    return model, images[4:], masks[4:], classes


# -- strength ------------------------------------------------------------------------------


@pytest.mark.parametrize("eps_text", ["2/255", "8/255"])
def test_sea_reaches_the_exact_optimum_and_beats_every_member(linear, eps_text: str) -> None:
    conv, images, labels = linear
    threat = ThreatModel("linf", parse_epsilon(eps_text))
    optimal = 1.0 - float(exact_flippable(conv, images, threat.eps.value).float().mean())
    sea = SEA(iterations=ITERATIONS, objective="pixel_accuracy")
    adv = sea(images, labels, threat=threat, ctx=context(conv))
    with torch.no_grad():
        attacked = float((conv(adv).argmax(1) == labels).float().mean())
    assert attacked >= optimal - 1e-6  # nothing beats the exact optimum
    assert attacked <= optimal + 0.02  # and the ensemble gets within 2% of it
    ours = miou_of(conv, adv, labels, K)
    for member in SEA_MEMBERS:
        alone = SEA(iterations=ITERATIONS, members=member, objective="pixel_accuracy")
        theirs = miou_of(conv, alone(images, labels, threat=threat, ctx=context(conv)), labels, K)
        assert ours <= theirs + 0.005, f"sea {ours:.4f} weaker than {member} alone {theirs:.4f}"


@pytest.mark.parametrize("eps_text", ["4/255", "8/255"])
def test_sea_is_at_least_as_strong_as_members_and_libraries_on_a_trained_cnn(
    cnn, eps_text: str, record_property
) -> None:
    model, images, masks, classes = cnn
    threat = ThreatModel("linf", parse_epsilon(eps_text))
    step = 2.5 * threat.eps.value / ITERATIONS

    def under(name: str, params: dict[str, Any]) -> float:
        adv = build_attack(name, params)(images, masks, threat=threat, ctx=context(model, classes))
        return miou_of(model, adv, masks, classes)

    ours = under("sea", {"iterations": ITERATIONS})
    others = {
        f"sea[{m}]": under("sea", {"iterations": ITERATIONS, "members": m}) for m in SEA_MEMBERS
    }
    others["pgd"] = under("pgd", {"steps": ITERATIONS, "step_size": step})
    others["apgd"] = under("apgd", {"steps": ITERATIONS})
    for name in ("torchattacks:PGD", "foolbox:LinfPGD"):
        library = name.partition(":")[0]
        if __import__("importlib.util").util.find_spec(library) is None:
            continue
        others[name] = under(name, {"steps": ITERATIONS, "step_size": step})
    clean = miou_of(model, images, masks, classes)
    record_property("miou", {"clean": clean, "sea": ours, **others})
    print(
        f"linf {eps_text}: clean {clean:.4f}, sea {ours:.4f}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in others.items())
    )
    assert ours < clean - 0.05, "the ensemble did little damage: the test model is too robust"
    for name, value in others.items():
        assert ours <= value + 0.005, f"sea ({ours:.4f}) weaker than {name} ({value:.4f})"


# -- the ensemble's per-image worst case ---------------------------------------------------


class _Fixed(APGD):
    """A member that returns fixed images and scores (no model involved)."""

    def __init__(self, adv: torch.Tensor, scores: list[float]) -> None:
        super().__init__(steps=1)
        self.adv, self.scores = adv, torch.tensor(scores)

    def search(self, images, labels, threat, ctx):
        return self.adv, self.scores


class _Pair(Ensemble):
    """A variant only names its members: the base keeps each image's worst."""

    name = "pair-test"

    def __init__(self, a: _Fixed, b: _Fixed) -> None:
        super().__init__()
        self.pair = [("a", a), ("b", b)]

    def members(self):
        return self.pair


def test_each_image_keeps_its_own_worst_member() -> None:
    images = torch.full((2, 3, 4, 4), 0.5)
    adv_a, adv_b = images + 0.01, images - 0.01
    ensemble = _Pair(_Fixed(adv_a, [0.1, 0.9]), _Fixed(adv_b, [0.5, 0.2]))
    won: list[str] = []
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    ctx = context(lambda x: x, on_winners=won.extend)
    adv = ensemble(images, torch.zeros(2, 4, 4, dtype=torch.long), threat=threat, ctx=ctx)
    assert torch.equal(adv[0], adv_a[0]) and torch.equal(adv[1], adv_b[1])
    assert won == ["a", "b"]


def test_different_members_win_different_images_of_a_real_model(cnn) -> None:
    model, images, masks, classes = cnn
    won: list[str] = []
    sea = SEA(iterations=ITERATIONS)
    threat = ThreatModel("linf", parse_epsilon("2/255"))
    adv = sea(images, masks, threat=threat, ctx=context(model, classes, on_winners=won.extend))
    assert len(won) == len(images) and set(won) <= set(SEA_MEMBERS)
    # Each image's score under the ensemble is the lowest of its members' scores.
    with torch.no_grad():
        ours = image_scores(model(adv), masks, context(model, classes), "miou")
    assert bool((ours <= 1.0).all())
    assert len(set(won)) >= 2, f"one member won every image: {won}"


# -- determinism and the threat model ------------------------------------------------------


def test_sea_is_deterministic_for_a_seed(linear) -> None:
    conv, images, labels = linear
    threat = ThreatModel("linf", parse_epsilon("8/255"))
    sea = SEA(iterations=4)
    a = sea(images, labels, threat=threat, ctx=context(conv, seed=3))
    b = sea(images, labels, threat=threat, ctx=context(conv, seed=3))
    c = sea(images, labels, threat=threat, ctx=context(conv, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.3), ("linf", 4 / 255)])
@pytest.mark.parametrize("schedule", [True, False])
def test_sea_and_apgd_stay_in_the_ball(linear, norm: str, eps: float, schedule: bool) -> None:
    conv, images, labels = linear
    threat = ThreatModel(norm, parse_epsilon(eps))
    for attack in (SEA(iterations=6, radius_schedule=schedule), APGD(steps=6, loss="js")):
        adv = attack(images, labels, threat=threat, ctx=context(conv))
        delta = (adv - images).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert bool((size <= eps + 1e-5).all()), f"{attack.name}: {size}"
        assert adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            assert float((conv(adv).argmax(1) == labels).float().mean()) < 1.0


def test_step_counts_and_progress_cover_every_member(linear) -> None:
    conv, images, labels = linear
    seen: list[tuple[int, int]] = []
    calls = 0

    def counted(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return conv(x)

    ctx = context(counted, on_step=lambda done, total: seen.append((done, total)))
    SEA(iterations=5, restarts=2)(
        images, labels, threat=ThreatModel("linf", parse_epsilon("4/255")), ctx=ctx
    )
    # per member and restart: one pass at each stage's start, then one per iteration
    assert calls == 4 * 2 * (3 + 5)
    assert seen[-1] == (40, 40) and all(total == 40 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


# -- losses ---------------------------------------------------------------------------------


def test_masked_losses_ignore_flipped_and_unlabelled_pixels() -> None:
    from audit.attacks import losses

    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).T.reshape(1, 2, 1, 2)  # predicts 0, then 1
    labels = torch.tensor([[[0, 0]]])  # the second pixel is already wrong
    for fn in (losses.masked_ce_loss, losses.masked_spherical_loss):
        only_first = fn(logits, labels, IGNORE)
        first_alone = fn(logits[..., :1], labels[..., :1], IGNORE)
        assert torch.allclose(only_first * 2, first_alone)  # mean over 2 pixels, 1 counts
    ignored = torch.tensor([[[IGNORE, IGNORE]]])
    for fn in (losses.masked_ce_loss, losses.js_loss, losses.balanced_ce_loss):
        assert float(fn(logits, ignored, IGNORE)) == 0.0
    # JS is bounded by log 2, reached on a confidently wrong pixel
    wrong = losses.js_loss(torch.tensor([[[[-50.0]], [[50.0]]]]), torch.tensor([[[0]]]), IGNORE)
    assert float(wrong) == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-4)


def test_class_axis_norms_agree_with_torch_reductions() -> None:
    """CosPGD's cosine and the spherical loss's length reduce over the class axis by hand
    (torch's reductions over that strided axis are ~10x slower on CPU): the same values."""
    import torch.nn.functional as F

    from audit.attacks import losses

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 6, 7, generator=g) * 4).requires_grad_()
    labels = torch.randint(0, 5, (3, 6, 7), generator=g)
    labels[0, :2] = IGNORE
    mask = labels != IGNORE
    safe = torch.where(mask, labels, 0)
    probs = logits.detach().softmax(1)
    cos = F.cosine_similarity(probs, F.one_hot(safe, 5).permute(0, 3, 1, 2).float(), dim=1)
    ce = F.cross_entropy(logits, safe, reduction="none") * mask
    reference = (ce * cos * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    assert torch.allclose(losses.cospgd_loss(logits, labels, IGNORE), reference, rtol=1e-6)

    z = logits / logits.detach().norm(dim=1, keepdim=True).clamp(min=1e-12)
    onehot = F.one_hot(safe, 5).permute(0, 3, 1, 2).float()
    margin = (z - 1e4 * onehot).amax(1) - (z * onehot).sum(1)
    correct = (logits.argmax(1) == labels).float()
    expected = (margin * correct * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    got = losses.masked_spherical_loss(logits, labels, IGNORE)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    (want,) = torch.autograd.grad(expected.sum(), logits)
    assert torch.allclose(grad, want, rtol=1e-5, atol=1e-7)


# -- claims, record and report --------------------------------------------------------------

SEA_CLAIM = 'id = "sea"\nkind = "attack"\nattack = "sea"\nnorm = "linf"\neps = "4/255"\n'


def parse(table: str):
    import tomllib

    return parse_suite(tomllib.loads(f"[[claims]]\n{table}"), path=Path("suite.toml"))


def test_claims_fill_the_objective_from_their_metric_and_validate_budget_knobs() -> None:
    (spec,) = parse(SEA_CLAIM + 'metric = "miou"\nmin = 0\nparams = {iterations = 5}').claims
    assert spec.params["attack_params"] == {"iterations": 5, "objective": "miou"}
    (spec,) = parse(SEA_CLAIM + 'metric = "pixel_accuracy"\nmin = 0\nrestarts = 2').claims
    assert spec.params["attack_params"] == {"restarts": 2, "objective": "pixel_accuracy"}
    (spec,) = parse(SEA_CLAIM + 'metric = "image_miou_p10"\nmin = 0').claims
    assert spec.params["metric"] == "image_miou_p10"
    for bad, match in [
        ('params = {members = "js,bogus"}', "members must name"),
        ("params = {iterations = 0}", "iterations must be a whole number"),
        ('params = {objective = "dice"}', "objective must be one of"),
        ("steps = 3", "does not take 'steps'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse(SEA_CLAIM + f'metric = "miou"\nmin = 0\n{bad}')


SEA_SUITE = """
name = "ens"

[[claims]]
id = "sea"
statement = "mIoU under SEA"
kind = "attack"
attack = "sea"
norm = "linf"
eps = ["2/255", "8/255"]
metric = "miou"
min = 0.0
params = {iterations = 3, members = "mask-ce,js"}

[[claims]]
id = "sea-p10"
statement = "the worst tenth of images under SEA"
kind = "attack"
attack = "sea"
norm = "linf"
eps = "8/255"
metric = "image_miou_p10"
min = 0.0
params = {iterations = 3, members = "mask-ce,js"}

[[claims]]
id = "sea-small"
statement = "small objects under SEA"
kind = "attack"
attack = "sea"
norm = "linf"
eps = "8/255"
metric = "small_object_recall"
min = 0.0
params = {iterations = 3, members = "mask-ce,js"}
"""


def test_the_record_and_report_show_which_member_won(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    from tests.conftest import TINY_DATA

    pytester.makefile(".toml", ens=SEA_SUITE)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "ens.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=4)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    entries = [e for e in record["evaluations"]["attacks"] if e["attack"] == "sea"]
    assert len(entries) == 2  # the three claims at 8/255 share one run
    for entry in entries:
        assert set(entry["members"]) == {"mask-ce", "js"}
        assert sum(entry["members"].values()) == entry["num_samples"] == 4
        assert set(entry["winners"].values()) <= {"mask-ce", "js"}
        assert len(entry["winners"]) == 4
        quantiles = entry["image_miou"]
        assert quantiles["min"] <= quantiles["p10"] <= quantiles["p50"] <= quantiles["p90"]
    by_id = {c["id"]: c for c in record["claims"]}
    p10 = by_id["sea-p10"]["measured"]
    assert p10 == pytest.approx(entries[1]["image_miou"]["p10"])
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "Which ensemble member won" in html
    assert next(iter(entries[0]["winners"])) in html


def test_members_share_the_generator_in_order(linear) -> None:
    """The ensemble's first member sees the same random start as that member alone."""
    conv, images, labels = linear
    threat = ThreatModel("linf", parse_epsilon("8/255"))
    first = SEA(iterations=3, members="mask-ce", objective="pixel_accuracy")
    both = SEA(iterations=3, members="mask-ce,js", objective="pixel_accuracy")
    won: list[str] = []
    a = first(images, labels, threat=threat, ctx=context(conv))
    b = both(
        images, labels, threat=threat, ctx=dataclasses.replace(context(conv), on_winners=won.extend)
    )
    for i, member in enumerate(won):
        if member == "mask-ce":
            assert torch.equal(a[i], b[i])

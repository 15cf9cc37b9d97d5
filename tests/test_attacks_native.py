"""Native attacks against a per-pixel linear model, whose optimal Linf attack is known exactly.

For logits z_p = W x_p + b at each pixel, moving pixel p from its class y to class j costs at
least (z_y - z_j) / ||W_y - W_j||_1 in Linf (the dual norm of Linf is L1), and pixels are
independent.  So at budget eps, the fraction of pixels an optimal attacker can flip is exact:
no attack may do better, and a strong one should come close.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audit.attacks import ATTACKS
from audit.attacks.base import AttackContext, project
from audit.attacks.native import PGD, arnab_schedule
from audit.threat import ThreatModel, parse_epsilon

K = 4


def linear_model(seed: int = 0) -> nn.Conv2d:
    """Random class directions, centred on grey, so every class wins somewhere."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, K, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(K, 3, 1, 1) * 4)
        conv.bias.copy_(-conv.weight[:, :, 0, 0].sum(1) * 0.5)
    return conv.eval()


def exact_flippable(conv: nn.Conv2d, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Per pixel: can some Linf perturbation of size eps change the predicted class?"""
    with torch.no_grad():
        z = conv(images)  # N x K x H x W
        y = z.argmax(1, keepdim=True)
        zy = z.gather(1, y)
        w = conv.weight[:, :, 0, 0]  # K x 3
        wy = w[y.squeeze(1)]  # N x H x W x 3
        dual = (wy.unsqueeze(3) - w.view(1, 1, 1, K, 3)).abs().sum(-1)  # N x H x W x K
        cost = (zy.squeeze(1).unsqueeze(-1) - z.permute(0, 2, 3, 1)) / dual.clamp(min=1e-12)
        cost.scatter_(-1, y.squeeze(1).unsqueeze(-1), float("inf"))
        # Clipping to [0, 1] can only make an attack harder; keep images away from the edges
        return cost.min(-1).values <= eps


def context(model: nn.Module, seed: int = 0) -> AttackContext:
    return AttackContext(
        model=model, ignore_index=255, num_classes=K, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture
def setup():
    conv = linear_model()
    g = torch.Generator().manual_seed(1)
    images = 0.3 + 0.4 * torch.rand(4, 3, 8, 8, generator=g)  # away from the [0, 1] edges
    with torch.no_grad():
        labels = conv(images).argmax(1)  # the model is right everywhere before the attack
    return conv, images, labels


def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


@pytest.mark.parametrize("eps_text", ["2/255", "8/255", "16/255"])
def test_pgd_reaches_the_exact_optimum_and_never_beats_it(setup, eps_text: str) -> None:
    conv, images, labels = setup
    threat = ThreatModel("linf", parse_epsilon(eps_text))
    optimal = 1.0 - float(exact_flippable(conv, images, threat.eps.value).float().mean())
    adv = PGD(steps=50, restarts=2)(images, labels, threat=threat, ctx=context(conv))
    attacked = accuracy(conv, adv, labels)
    assert attacked >= optimal - 1e-6  # nothing beats the exact optimum
    assert attacked <= optimal + 0.03  # and PGD gets within 3% of it
    assert (adv - images).abs().max() <= threat.eps.value + 1e-6


@pytest.mark.parametrize("name", sorted(ATTACKS.names()))
def test_every_attack_respects_its_ball_and_the_pixel_range(setup, name: str) -> None:
    conv, images, labels = setup
    cls = ATTACKS.get(name)
    for norm in cls.norms:
        eps = 8 / 255 if norm == "linf" else 0.5
        threat = ThreatModel(norm, parse_epsilon(eps))
        attack = cls(steps=5) if "steps" in cls.defaults else cls()
        adv = attack(images, labels, threat=threat, ctx=context(conv))
        delta = (adv - images).flatten(1)
        limit = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert bool((limit <= eps + 1e-5).all()), name
        assert adv.min() >= 0 and adv.max() <= 1
        assert accuracy(conv, adv, labels) < 1.0, f"{name} did no damage at {norm} {eps}"


def test_attacks_are_deterministic_for_a_seed(setup) -> None:
    conv, images, labels = setup
    threat = ThreatModel("l2", parse_epsilon(0.3))
    a = PGD(steps=3)(images, labels, threat=threat, ctx=context(conv, seed=5))
    b = PGD(steps=3)(images, labels, threat=threat, ctx=context(conv, seed=5))
    c = PGD(steps=3)(images, labels, threat=threat, ctx=context(conv, seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_leaves_model_parameters_and_grads_untouched(setup) -> None:
    conv, images, labels = setup
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    PGD(steps=2)(
        images, labels, threat=ThreatModel("linf", parse_epsilon("4/255")), ctx=context(conv)
    )
    assert all(torch.equal(before[k], v) for k, v in conv.state_dict().items())
    assert all(p.grad is None for p in conv.parameters())


def test_ignored_pixels_do_not_drive_the_attack(setup) -> None:
    conv, images, labels = setup
    ignored = torch.full_like(labels, 255)
    threat = ThreatModel("linf", parse_epsilon("8/255"))
    adv = ATTACKS.get("fgsm")()(images, ignored, threat=threat, ctx=context(conv))
    assert torch.equal(adv, images)  # no labelled pixel: zero loss, zero gradient


def test_single_step_grid_matches_separate_runs(setup) -> None:
    conv, images, labels = setup
    fgsm = ATTACKS.get("fgsm")()
    threats = [ThreatModel("linf", parse_epsilon(e)) for e in ("1/255", "4/255")]
    grid = fgsm.grid(images, labels, threats, context(conv))
    for threat, adv in zip(threats, grid, strict=True):
        assert torch.equal(adv, fgsm(images, labels, threat=threat, ctx=context(conv)))


def test_arnab_schedule_and_projection() -> None:
    assert arnab_schedule(4 / 255) == pytest.approx((1 / 255, 5))
    assert arnab_schedule(32 / 255)[1] == 36
    assert arnab_schedule(0.25 / 255)[1] == 1
    x = torch.zeros(1, 3, 2, 2)
    far = torch.ones(1, 3, 2, 2)
    l2 = project(far, x, ThreatModel("l2", parse_epsilon(0.5)))
    assert float(l2.flatten().norm()) == pytest.approx(0.5)


def test_pgd_stops_once_every_pixel_aimed_at_is_flipped(setup) -> None:
    import dataclasses

    conv, images, labels = setup
    # aim at pixels comfortably within reach only, as the soundness checks aim at theirs
    flippable = exact_flippable(conv, images, 6 / 255)
    aimed = torch.where(flippable, labels, torch.full_like(labels, 255))
    threat = ThreatModel("linf", parse_epsilon("16/255"))
    steps: list[int] = []
    ctx = dataclasses.replace(
        context(conv), on_step=lambda done, total: steps.append(done), stop_when_all_flipped=True
    )
    adv = PGD(steps=50)(images, aimed, threat=threat, ctx=ctx)
    with torch.no_grad():
        pred = conv(adv).argmax(1)
    assert bool((pred != labels)[flippable].all())  # every aimed-at pixel flipped ...
    assert 0 < len(steps) < 50  # ... and the attack stopped there
    # without the stop, the same attack runs every step
    steps.clear()
    PGD(steps=50)(
        images, aimed, threat=threat, ctx=dataclasses.replace(ctx, stop_when_all_flipped=False)
    )
    assert len(steps) == 50

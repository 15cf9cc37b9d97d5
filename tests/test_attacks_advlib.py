"""adv-lib's minimal-norm attacks through the adapter, and the empirical radii built on them.

Most checks use a per-pixel linear model, z_p = W x_p + b, whose exact minimal L2 radius per
pixel is closed-form: for a pixel predicted y, min over j != y of (z_y - z_j) / ||W_y - W_j||_2
(ignoring the [0, 1] box: images stay away from its edges).  No attack may beat it, and on
one-pixel images, where a pixel's radius is the image's, a good attack comes close.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("adv_lib", reason="adv-lib is the 'advlib' extra")

from audit.attacks import build_attack, build_min_norm_attack
from audit.attacks.adapters import advlib
from audit.attacks.base import AttackContext
from audit.attacks.radius import image_radius, pixel_radii
from audit.errors import AttackUnavailable
from audit.model.fingerprint import fingerprint_module
from audit.threat import ThreatModel, parse_epsilon

K = 4
IGNORE = 255

#: (attack, norm, parameters) strong enough to flip most pixels of both test models quickly
CASES: list[tuple[str, str, dict]] = [
    ("alma_prox", "linf", {"steps": 150, "lr_init": 0.02, "adv_threshold": 0.9}),
    ("dag", "linf", {"steps": 100, "gamma": 0.01, "adv_threshold": 0.9}),
    ("dag", "l2", {"steps": 100, "gamma": 0.1, "adv_threshold": 0.9}),
    ("pdgd", "l2", {"steps": 100, "primal_lr": 0.3, "adv_threshold": 0.9}),
    ("pdpgd", "l2", {"steps": 100, "adv_threshold": 0.9}),
    ("pdpgd", "linf", {"steps": 100, "adv_threshold": 0.9}),
    ("asma", "l2", {"steps": 100, "tau": 1e-2, "beta": 1e-2, "adv_threshold": 0.9}),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: on a busy machine, intra-op threads cost more than they save
    (this module runs about 4x faster on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_model(seed: int = 0) -> nn.Conv2d:
    """Random class directions, centred on grey, so every class wins somewhere."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, K, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(K, 3, 1, 1) * 4)
        conv.bias.copy_(-conv.weight[:, :, 0, 0].sum(1) * 0.5)
    return conv.eval()


def conv_net(seed: int = 0) -> nn.Sequential:
    """Two convolutions with BatchNorm (eval mode, non-trivial statistics) between them,
    the output bias centred on grey images so every class wins somewhere."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, K, 1)
    )
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
        net[3].weight.mul_(3)
        net.eval()
        reference = 0.3 + 0.4 * torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(7))
        net[3].bias.sub_(net(reference).mean((0, 2, 3)))
    return net


MODELS = {"linear": linear_model, "convnet": conv_net}


def context(model, seed: int = 0, ignore_index: int | None = IGNORE, k: int = K) -> AttackContext:
    return AttackContext(
        model=model,
        ignore_index=ignore_index,
        num_classes=k,
        generator=torch.Generator().manual_seed(seed),
    )


def grey_images(n: int = 2, size: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 3, size, size, generator=g)  # away from the [0, 1] edges


def clean_labels(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The clean prediction, with a few pixels marked ignored."""
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:, 0, :3] = IGNORE
    return labels


def exact_l2_radius(conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """Per pixel (N x H x W): the smallest L2 change of that pixel flipping its class."""
    with torch.no_grad():
        z = conv(images)
        y = z.argmax(1)
        zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
        w = conv.weight[:, :, 0, 0]  # K x 3
        dist = (w[y].unsqueeze(3) - w.view(1, 1, 1, K, 3)).norm(dim=-1)  # N x H x W x K
        cost = (zy.unsqueeze(-1) - z.permute(0, 2, 3, 1)) / dist.clamp(min=1e-12)
        cost.scatter_(-1, y.unsqueeze(-1), float("inf"))
        return cost.min(-1).values


def with_grad_params(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# -- the attacks ---------------------------------------------------------------------------


def test_supported_attacks_and_norms() -> None:
    assert advlib.SUPPORTED == {
        "alma_prox": ("linf",),
        "dag": ("linf", "l2"),
        "pdgd": ("l2",),
        "pdpgd": ("linf", "l2"),
        "asma": ("l2",),
    }
    assert {name for name, _, _ in CASES} == set(advlib.SUPPORTED)
    assert {(name, norm) for name, norm, _ in CASES} == {
        (name, norm) for name, norms in advlib.SUPPORTED.items() for norm in norms
    }


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize(("name", "norm", "params"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_attack_flips_most_pixels_deterministically_and_leaves_the_model_alone(
    model_name: str, name: str, norm: str, params: dict
) -> None:
    model = with_grad_params(MODELS[model_name]())
    images = grey_images()
    labels = clean_labels(model, images)
    before = fingerprint_module(model, include_grads=True)
    rng_before = torch.get_rng_state()

    attack = build_min_norm_attack(f"advlib:{name}", params)
    assert (attack.name, attack.family, attack.library) == (f"advlib:{name}", "min_norm", "advlib")
    adv = attack(images, labels, norm=norm, ctx=context(model, seed=3))
    again = attack(images, labels, norm=norm, ctx=context(model, seed=3))

    assert torch.equal(adv, again)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert fingerprint_module(model, include_grads=True) == before
    assert adv.min() >= 0 and adv.max() <= 1
    labelled = labels != IGNORE
    with torch.no_grad():
        flipped = (model(adv).argmax(1) != labels)[labelled].float().mean()
    assert flipped >= 0.6, f"{name} {norm} flipped only {float(flipped):.0%}"


@pytest.mark.parametrize(("name", "norm", "params"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_channels_last_logits_change_nothing_but_the_layout(
    name: str, norm: str, params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter hands adv-lib channels-last logits (its per-step argmax is ~9x faster on
    CPU); every attack's result must equal the one on the model's own layout, bit for bit."""
    model = conv_net()
    images = grey_images(size=12)
    labels = clean_labels(model, images)
    layouts: list[bool] = []

    def seen(fn):
        def forward(x: torch.Tensor) -> torch.Tensor:
            logits = fn(x)
            layouts.append(logits.is_contiguous(memory_format=torch.channels_last))
            return logits

        return forward

    attack = build_min_norm_attack(f"advlib:{name}", {**params, "steps": 12})
    monkeypatch.setattr(
        advlib, "_channels_last", lambda fn, wrap=advlib._channels_last: seen(wrap(fn))
    )
    fast = attack(images, labels, norm=norm, ctx=context(model, seed=3))
    assert layouts and all(layouts)
    monkeypatch.setattr(advlib, "_channels_last", lambda fn: fn)
    plain = attack(images, labels, norm=norm, ctx=context(model, seed=3))
    assert torch.equal(fast, plain)


def test_seed_comes_from_the_context_generator() -> None:
    conv = linear_model()
    images = grey_images()
    labels = clean_labels(conv, images)
    attack = build_min_norm_attack("advlib:pdgd", {"steps": 5, "random_init": 0.05})
    a = attack(images, labels, norm="l2", ctx=context(conv, seed=1))
    b = attack(images, labels, norm="l2", ctx=context(conv, seed=1))
    c = attack(images, labels, norm="l2", ctx=context(conv, seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("name", "norm"), [("pdgd", "l2"), ("pdpgd", "l2"), ("dag", "l2")])
def test_one_pixel_radius_is_never_below_the_exact_minimum_and_close_to_it(
    name: str, norm: str
) -> None:
    conv = linear_model()
    images = grey_images(n=16, size=1)  # one pixel per image: its radius is the image's
    with torch.no_grad():
        labels = conv(images).argmax(1)
    params = {"steps": 200} | ({"gamma": 0.002} if name == "dag" else {})
    adv = build_min_norm_attack(f"advlib:{name}", params)(
        images, labels, norm=norm, ctx=context(conv)
    )
    exact = exact_l2_radius(conv, images).flatten()
    with torch.no_grad():
        flipped = (conv(adv).argmax(1) != labels).flatten()
    ratio = image_radius(images, adv, "l2")[flipped] / exact[flipped]
    assert flipped.all()
    assert ratio.min() >= 1 - 1e-4  # nothing beats the exact minimum
    assert ratio.median() <= 1.2  # and the attack comes close to it


@pytest.mark.parametrize(
    ("name", "params"),
    [("pdpgd", {"steps": 100}), ("asma", {"steps": 50, "tau": 1e-2, "beta": 1e-2})],
)
def test_pixel_radii_of_an_attack_bound_the_exact_radius_from_above(name: str, params) -> None:
    conv = linear_model()
    images = grey_images()
    with torch.no_grad():
        labels = conv(images).argmax(1)
    adv = build_min_norm_attack(f"advlib:{name}", params)(
        images, labels, norm="l2", ctx=context(conv)
    )
    radii = pixel_radii(conv, images, adv, norm="l2", steps=32)
    exact = exact_l2_radius(conv, images)
    finite = torch.isfinite(radii)
    assert finite.float().mean() > 0.5
    assert bool((radii[finite] >= exact[finite] - 1e-5).all())
    assert bool((radii[finite] <= image_radius(images, adv, "l2").max() + 1e-6).all())


# -- fixed budget --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "norm", "eps"),
    [("pdgd", "l2", 0.3), ("alma_prox", "linf", "8/255"), ("dag", "linf", "4/255")],
)
def test_fixed_budget_result_lies_in_the_ball(name: str, norm: str, eps) -> None:
    conv = linear_model()
    images = grey_images()
    labels = clean_labels(conv, images)
    threat = ThreatModel(norm, parse_epsilon(eps))
    params = {"steps": 50} | ({"gamma": 0.01} if name == "dag" else {})
    attack = build_attack(f"advlib:{name}", params)
    assert (attack.family, attack.library, attack.name) == ("min_norm", "advlib", f"advlib:{name}")
    adv = attack(images, labels, threat=threat, ctx=context(conv))
    assert bool((image_radius(images, adv, norm) <= threat.eps.value + 1e-6).all())
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (conv(adv).argmax(1) != conv(images).argmax(1)).any()


def test_fixed_budget_l2_rescales_the_minimal_perturbation() -> None:
    conv = linear_model()
    images = grey_images()
    labels = clean_labels(conv, images)
    params = {"steps": 50}
    free = build_min_norm_attack("advlib:pdgd", params)(
        images, labels, norm="l2", ctx=context(conv)
    )
    eps = 0.2
    assert bool((image_radius(images, free, "l2") > eps).all())
    budget = build_attack("advlib:pdgd", params)(
        images, labels, threat=ThreatModel("l2", parse_epsilon(eps)), ctx=context(conv)
    )
    assert image_radius(images, budget, "l2") == pytest.approx([eps] * len(images), rel=1e-5)
    cosine = nn.functional.cosine_similarity(
        (free - images).flatten(1), (budget - images).flatten(1)
    )
    assert cosine == pytest.approx([1.0] * len(images), abs=1e-5)


def test_fixed_budget_sweep_runs_the_attack_once_per_norm() -> None:
    conv = linear_model()
    images = grey_images()
    labels = clean_labels(conv, images)
    attack = build_attack("advlib:pdpgd", {"steps": 20})
    assert attack.shares_grid
    threats = [
        ThreatModel(n, parse_epsilon(e))
        for n, e in [("l2", 0.1), ("l2", 0.5), ("linf", "4/255"), ("l2", 0)]
    ]
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return conv(x)

    grid = attack.grid(images, labels, threats, context(model))
    forward = len(calls)
    for threat, adv in zip(threats, grid, strict=True):
        alone = attack(images, labels, threat=threat, ctx=context(conv))
        assert torch.equal(adv, alone), threat.label
    calls.clear()
    attack(images, labels, threat=threats[0], ctx=context(model))
    assert forward == 2 * len(calls)  # two runs (l2, linf) for four threats


# -- labels and the ignore index -----------------------------------------------------------


def test_library_labels_put_ignored_pixels_at_or_above_the_class_count() -> None:
    labels = torch.tensor([[[0, 3, 255, -100]]])
    assert advlib.library_labels(labels, None, 4).tolist() == [[[0, 3, 255, 4]]]
    assert advlib.library_labels(labels, 255, 4).tolist() == [[[0, 3, 4, 4]]]
    assert advlib.library_labels(labels, -100, 4).tolist() == [[[0, 3, 255, 4]]]
    # with more than 255 classes, 255 is a class unless it is the ignore index
    assert advlib.library_labels(labels, 255, 300).tolist() == [[[0, 3, 300, 300]]]
    assert advlib.library_labels(labels.int(), 255, 4).dtype == torch.int64


@pytest.mark.parametrize("name", sorted(advlib.SUPPORTED))
def test_fully_ignored_images_are_left_alone(name: str) -> None:
    conv = linear_model()
    images = grey_images(size=4)
    labels = torch.full((2, 4, 4), -100)
    attack = build_min_norm_attack(f"advlib:{name}", {"steps": 5})
    adv = attack(
        images, labels, norm=advlib.SUPPORTED[name][0], ctx=context(conv, ignore_index=-100)
    )
    assert torch.equal(adv, images)


def test_no_ignore_index_attacks_every_pixel() -> None:
    conv = linear_model()
    images = grey_images()
    with torch.no_grad():
        labels = conv(images).argmax(1)
    adv = build_min_norm_attack("advlib:dag", {"gamma": 0.01})(
        images, labels, norm="linf", ctx=context(conv, ignore_index=None)
    )
    with torch.no_grad():
        assert float((conv(adv).argmax(1) != labels).float().mean()) >= 0.99


# -- parameters and errors -----------------------------------------------------------------


def test_parameters_are_canonical() -> None:
    greek = build_min_norm_attack("advlib:dag", {"γ": 0.01, "max_iter": 7})
    ascii_ = build_min_norm_attack("advlib:dag", {"gamma": 0.01, "steps": 7})
    assert greek.params == ascii_.params
    assert ascii_.params["max_iter"] == 7 and ascii_.params["γ"] == 0.01
    alma = build_min_norm_attack("advlib:alma_prox", {})
    assert alma.params["num_steps"] == 500 and alma.params["compile"] is False
    assert "penalty" not in alma.params  # a callable default stays the library's
    assert build_min_norm_attack("advlib:dag", {}).params["γ"] is None  # 1e-3 per Linf step


def test_dag_default_step_is_scaled_for_unit_range_images() -> None:
    assert pytest.approx(1e-3) == advlib.DAG_LINF_STEP
    conv = linear_model()
    images = grey_images()
    labels = clean_labels(conv, images)
    # DAG keeps the first iterate flipping adv_threshold of the pixels: after i steps of
    # 1e-3 (Linf) its perturbation is at most i * 1e-3
    for norm, step in (("linf", 1e-3), ("l2", 1e-3 * math.sqrt(images[0].numel()))):
        adv = build_min_norm_attack("advlib:dag", {"steps": 20, "adv_threshold": 0.05})(
            images, labels, norm=norm, ctx=context(conv)
        )
        radius = image_radius(images, adv, norm)
        assert bool((radius > 0).all()), norm
        assert bool((radius <= 20 * step + 1e-6).all()), norm


def test_unknown_attack_lists_the_supported_ones() -> None:
    with pytest.raises(AttackUnavailable, match=r"no segmentation attack 'fab'.*advlib:alma_prox"):
        build_min_norm_attack("advlib:fab", {})
    with pytest.raises(AttackUnavailable, match=r"supported: advlib:alma_prox \(linf\)"):
        build_attack("advlib:fab", {})


def test_unknown_and_reserved_parameters_are_type_errors() -> None:
    with pytest.raises(TypeError, match=r"advlib:pdgd' got unknown parameter 'lr'.*primal_lr"):
        build_min_norm_attack("advlib:pdgd", {"lr": 0.1})
    with pytest.raises(TypeError, match=r"sets 'p' itself"):
        build_min_norm_attack("advlib:dag", {"p": 2})
    with pytest.raises(TypeError, match=r"sets 'norm' itself"):
        build_attack("advlib:pdpgd", {"norm": 2})
    with pytest.raises(TypeError, match=r"sets 'targeted' itself"):
        build_min_norm_attack("advlib:asma", {"targeted": True})
    with pytest.raises(TypeError, match=r"'steps' and 'num_steps'.*give one"):
        build_min_norm_attack("advlib:alma_prox", {"steps": 5, "num_steps": 6})
    with pytest.raises(TypeError, match=r"'compile' must be true or false"):
        build_min_norm_attack("advlib:alma_prox", {"compile": "yes"})


def test_wrong_norm_is_refused() -> None:
    conv = linear_model()
    images = grey_images()
    labels = clean_labels(conv, images)
    with pytest.raises(ValueError, match=r"'advlib:alma_prox' minimises linf, not l2"):
        build_min_norm_attack("advlib:alma_prox", {})(images, labels, norm="l2", ctx=context(conv))
    with pytest.raises(ValueError, match=r"'advlib:pdgd' supports l2, not linf"):
        build_attack("advlib:pdgd", {})(
            images,
            labels,
            threat=ThreatModel("linf", parse_epsilon("4/255")),
            ctx=context(conv),
        )


def test_alma_prox_needs_three_classes() -> None:
    conv = nn.Conv2d(3, 2, 1).eval()
    images = grey_images()
    with pytest.raises(AttackUnavailable, match=r"needs at least 3 classes"):
        build_min_norm_attack("advlib:alma_prox", {"steps": 2})(
            images, torch.zeros(2, 8, 8, dtype=torch.long), norm="linf", ctx=context(conv, k=2)
        )


# -- pixel_radii on a hand-made path -------------------------------------------------------


def crossing(conv: nn.Conv2d, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per pixel: the L2 size s of the whole-image perturbation s * delta / ||delta|| at which
    the pixel's class first changes (inf if never within delta).

    Logit differences z_y - z_j are linear in s; the first that reaches 0 changes the argmax,
    and since max_j (z_j - z_y) is convex in s the pixel never changes back.
    """
    with torch.no_grad():
        z = conv(images)
        y = z.argmax(1, keepdim=True)
        slope = conv(images + delta) - z  # the model is affine: z(t) = z + t * slope
        gap = z.gather(1, y) - z  # >= 0
        rate = slope - slope.gather(1, y)  # growth of z_j - z_y per unit of the path's t
        t = torch.where(rate > 0, gap / rate.clamp(min=1e-12), torch.full_like(gap, math.inf))
        t.scatter_(1, y, math.inf)
        t = t.min(1).values
        length = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
        return torch.where(t <= 1, t * length, torch.full_like(t, math.inf))


@pytest.mark.parametrize("steps", [8, 64])
def test_pixel_radii_match_a_known_path_within_the_grid(steps: int) -> None:
    conv = linear_model()
    images = grey_images(n=3)
    g = torch.Generator().manual_seed(4)
    delta = 0.25 * (torch.rand(images.shape, generator=g) * 2 - 1)
    adv = images + delta
    radii = pixel_radii(conv, images, adv, norm="l2", steps=steps)
    expected = crossing(conv, images, delta)
    length = delta.flatten(1).norm(dim=1).view(-1, 1, 1).expand_as(radii)

    assert torch.equal(torch.isinf(radii), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert 0.2 < finite.float().mean() < 1.0  # both kinds of pixel occur
    error = (radii - expected)[finite]
    assert bool((error >= -1e-5).all())  # upper bound: at or after the crossing
    assert bool((error <= (length / steps)[finite] + 1e-5).all())  # within one grid step


def test_pixel_radii_reference_and_ignore_index() -> None:
    conv = linear_model()
    images = grey_images(n=1)
    with torch.no_grad():
        clean = conv(images).argmax(1)
    reference = clean.clone()
    reference[0, 0, 0] = (clean[0, 0, 0] + 1) % K  # the model is wrong here already
    reference[0, 0, 1] = IGNORE
    radii = pixel_radii(
        conv, images, images.clone(), norm="linf", reference=reference, ignore_index=IGNORE
    )
    assert radii[0, 0, 0] == 0
    assert math.isnan(float(radii[0, 0, 1]))
    assert bool(torch.isinf(radii[0, 1:]).all())  # no perturbation: nothing changes


def test_pixel_radii_linf_uses_the_linf_length() -> None:
    conv = linear_model()
    images = grey_images(n=2)
    with torch.no_grad():
        z = conv(images)
    w = conv.weight[:, :, 0, 0]
    delta = torch.zeros_like(images)
    for n in range(len(images)):
        # pixel (2, 3) moves 0.3 towards its runner-up class, the steepest Linf direction
        y, j = z[n, :, 2, 3].topk(2).indices.tolist()
        delta[n, :, 2, 3] = 0.3 * (w[j] - w[y]).sign()
    delta[:, :, 5, 5] = -0.1  # and pixel (5, 5) a little; nothing else moves
    radii = pixel_radii(conv, images, images + delta, norm="linf", steps=10)
    moved = torch.zeros_like(radii, dtype=torch.bool)
    moved[:, 2, 3] = moved[:, 5, 5] = True
    assert bool(torch.isinf(radii[~moved]).all())
    assert bool(torch.isfinite(radii[:, 2, 3]).all())
    # the grid is 0.03, 0.06, ..., 0.3 of the Linf length 0.3, whichever pixel changes
    steps = radii[moved & torch.isfinite(radii)] / 0.03
    assert steps == pytest.approx(steps.round(), abs=1e-4)


def test_image_radius_and_argument_errors() -> None:
    images = torch.zeros(2, 3, 2, 2)
    adv = images.clone()
    adv[0, 0, 0, 0] = 0.3
    adv[0, 1, 1, 1] = 0.4
    adv[1, 2, 0, 1] = -0.2
    assert image_radius(images, adv, "l2").tolist() == pytest.approx([0.5, 0.2])
    assert image_radius(images, adv, "linf").tolist() == pytest.approx([0.4, 0.2])
    with pytest.raises(ValueError, match=r"expected norm linf or l2, got 'l1'"):
        image_radius(images, adv, "l1")
    with pytest.raises(ValueError, match=r"steps must be a positive integer"):
        pixel_radii(lambda x: x, images, adv, norm="l2", steps=0)
    with pytest.raises(ValueError, match=r"same shape"):
        pixel_radii(lambda x: x, images, adv[:1], norm="l2")

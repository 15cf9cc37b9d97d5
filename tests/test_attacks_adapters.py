"""torchattacks and foolbox adapters: every supported attack behaves like a SegAudit attack.

The conformance table runs each supported attack of both adapters on two small models (a
per-pixel linear model whose parameters require grad, and a conv/BatchNorm model in eval mode
with frozen parameters) and checks what the engine relies on: the result lies in the threat
model's ball and in [0, 1], it does damage, it is a function of ``ctx.generator`` alone (not
of the global RNG, whose state it leaves alone), an image without labelled pixels is left
as it is, and the model is bit-identical afterwards (a library that called ``train()`` would
change the BatchNorm statistics; one that called ``backward()`` would leave ``.grad``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("torchattacks")
pytest.importorskip("foolbox")

from audit import metrics
from audit.attacks import build_attack
from audit.attacks.adapters import foolbox as fb_adapter
from audit.attacks.adapters import torchattacks as ta_adapter
from audit.attacks.base import Attack, AttackContext
from audit.errors import AttackUnavailable
from audit.model.fingerprint import fingerprint_module
from audit.threat import ThreatModel, parse_epsilon

K = 4
IGNORE = 255
EPS = {"linf": 16 / 255, "l2": 1.0}

ATTACKS: list[str] = [f"torchattacks:{n}" for n in ta_adapter.SUPPORTED] + [
    f"foolbox:{n}" for n in fb_adapter.SUPPORTED
]

#: attacks that stay random with ``random_start=False`` (a random first step or random samples)
RANDOM_INIT = {"torchattacks:TPGD", "torchattacks:RFGSM", "torchattacks:FFGSM"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: on a busy machine, torch's intra-op threads cost far more than
    they save (a 2-core box under load ran this file 15x slower with 2 threads than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def norm_of(name: str) -> str:
    library, _, attack = name.partition(":")
    return (ta_adapter if library == "torchattacks" else fb_adapter).SUPPORTED[attack]


def linear_model(seed: int = 0) -> nn.Conv2d:
    """Per-pixel logits W x + b, centred on grey so every class wins somewhere; the
    parameters require grad, as a user's model often does."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, K, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(K, 3, 1, 1, generator=gen) * 4)
        conv.bias.copy_(-conv.weight[:, :, 0, 0].sum(1) * 0.5)
    return conv.eval()


def batchnorm_model(seed: int = 0) -> nn.Sequential:
    """Conv, BatchNorm (non-trivial running statistics), ReLU, conv; eval mode, frozen."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, K, 1)
    )
    with torch.no_grad():
        # moderate logits: saturated softmax gradients are denormal floats, which are slow
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model[1].running_mean.copy_(torch.randn(8, generator=gen))
        model[1].running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    model.requires_grad_(False)
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {"linear": linear_model, "batchnorm": batchnorm_model}


def data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Images away from the [0, 1] edges, labels = clean prediction with ignored pixels:
    a stripe of image 0 and all of image 2."""
    gen = torch.Generator().manual_seed(1)
    images = 0.3 + 0.4 * torch.rand(3, 3, 8, 8, generator=gen)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[0, :3] = IGNORE
    labels[2] = IGNORE
    return images, labels


def context(model: Callable[[torch.Tensor], torch.Tensor], seed: int = 0, **kw: Any):
    return AttackContext(
        model=model,
        ignore_index=IGNORE,
        num_classes=K,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        right = model(x).argmax(1) == labels
    return float(right[labels != IGNORE].float().mean())


def fast_params(attack: Attack, eps: float) -> dict[str, Any]:
    """Few steps with a step size that reaches the ball's edge (foolbox's relative defaults
    are tuned for 40-50 steps)."""
    params: dict[str, Any] = {}
    if "steps" in attack.defaults:
        params["steps"] = 4
        if "step_size" in attack.defaults:
            params["step_size"] = 2.5 * eps / 4
    return params


def threat_for(name: str) -> ThreatModel:
    norm = norm_of(name)
    return ThreatModel(norm, parse_epsilon(EPS[norm]))


@pytest.mark.parametrize("model_kind", sorted(MODELS))
@pytest.mark.parametrize("name", ATTACKS)
def test_conformance(name: str, model_kind: str) -> None:
    model = MODELS[model_kind]()
    images, labels = data(model)
    threat = threat_for(name)
    eps = threat.eps.value
    attack = build_attack(name, {})
    attack = build_attack(name, fast_params(attack, eps))
    before = fingerprint_module(model, include_grads=True)
    gradients: list[torch.Tensor] = []

    torch.manual_seed(123)
    rng = torch.get_rng_state()
    adv = attack(images, labels, threat=threat, ctx=context(model, on_gradient=gradients.append))
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG state changed"
    torch.manual_seed(456)  # a different global state: the result must not depend on it
    again = attack(images, labels, threat=threat, ctx=context(model))

    assert torch.equal(adv, again), "not deterministic for a fixed ctx.generator seed"
    assert fingerprint_module(model, include_grads=True) == before, "the model changed"
    assert model.training is False
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - images).flatten(1)
    size = delta.abs().max(1).values if threat.norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps + 1e-5).all()), f"outside the {threat.norm} ball: {size}"
    assert torch.equal(adv[2], images[2]), "an image without labelled pixels was attacked"
    assert accuracy(model, adv, labels) < accuracy(model, images, labels), "no damage"
    assert gradients, "no input gradient reached ctx.on_gradient"
    assert all(g.shape[1:] == images.shape[1:] for g in gradients)


@pytest.mark.parametrize("name", ATTACKS)
def test_ignored_pixels_have_no_influence(name: str) -> None:
    """On a per-pixel model an ignored pixel gets no gradient, so its perturbation is the
    random start only: zero without one, and independent of the steps or step size."""
    model = linear_model()
    images, labels = data(model)
    threat = threat_for(name)
    eps = threat.eps.value
    base = build_attack(name, {})
    params: dict[str, Any] = {}
    if "random_start" in base.defaults:
        params["random_start"] = False
    if "step_size" in base.defaults:
        params["step_size"] = eps / 4  # fixed: RFGSM's random step has this size too
    if "steps" in base.defaults:
        variants = [{"steps": 1}, {"steps": 3}]
    elif "step_size" in base.defaults:
        variants = [{"step_size": eps / 2}, {"step_size": eps}]
    else:
        variants = [{}]
    ignored = (labels == IGNORE).unsqueeze(1).expand_as(images)
    deltas = []
    for variant in variants:
        attack = build_attack(name, {**params, **variant})
        adv = attack(images, labels, threat=threat, ctx=context(model))
        deltas.append((adv - images)[ignored])
        assert (adv - images)[~ignored].abs().max() > 0, "labelled pixels were not attacked"
    assert all(torch.equal(d, deltas[0]) for d in deltas)
    if name not in RANDOM_INIT:
        assert torch.equal(deltas[0], torch.zeros_like(deltas[0]))


def test_all_ignored_batch_is_returned_unchanged() -> None:
    model = linear_model()
    images, labels = data(model)
    labels[:] = IGNORE
    for name in ("torchattacks:PGD", "foolbox:LinfPGD"):
        adv = build_attack(name, {"steps": 2})(
            images, labels, threat=threat_for(name), ctx=context(model)
        )
        assert torch.equal(adv, images)


@pytest.mark.parametrize("name", ["torchattacks:PGD", "foolbox:LinfPGD"])
def test_seed_changes_the_random_start(name: str) -> None:
    model = linear_model()
    images, labels = data(model)
    attack = build_attack(name, {"steps": 1, "step_size": 1 / 255})
    a = attack(images, labels, threat=threat_for(name), ctx=context(model, seed=5))
    b = attack(images, labels, threat=threat_for(name), ctx=context(model, seed=6))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(("name", "calls"), [("torchattacks:PGD", 3), ("foolbox:LinfPGD", 4)])
def test_every_forward_pass_goes_through_ctx_model(name: str, calls: int) -> None:
    """The engine counts passes through ``ctx.model``; foolbox adds one to judge success."""
    model = linear_model()
    images, labels = data(model)
    count = 0

    def counted(x: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return model(x)

    build_attack(name, {"steps": 3})(images, labels, threat=threat_for(name), ctx=context(counted))
    assert count == calls


@pytest.mark.parametrize("name", ["torchattacks:PGD", "foolbox:LinfPGD"])
def test_restarts_keep_the_best_run_per_image(name: str) -> None:
    model = linear_model()
    images, labels = data(model)
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    one = build_attack(name, {"steps": 2, "step_size": 1 / 255})
    three = build_attack(name, {"steps": 2, "step_size": 1 / 255, "restarts": 3})
    a = one(images, labels, threat=threat, ctx=context(model))
    b = three(images, labels, threat=threat, ctx=context(model))
    for i in range(2):  # images with labelled pixels
        assert accuracy(model, b[i : i + 1], labels[i : i + 1]) <= accuracy(
            model, a[i : i + 1], labels[i : i + 1]
        )


# -- parameters and errors ---------------------------------------------------------------


def test_common_parameters_map_onto_the_library() -> None:
    cpu = torch.device("cpu")
    module = ta_adapter.DenseModule(lambda x: x, None, lambda grad: None, device=cpu)
    pgd = build_attack("torchattacks:PGD", {"steps": 7, "step_size": 0.01, "random_start": False})
    lib = pgd.library_attack(module, 0.03, cpu)
    assert (lib.eps, lib.alpha, lib.steps, lib.random_start) == (0.03, 0.01, 7, False)
    default = build_attack("torchattacks:PGD", {"steps": 5})
    assert default.library_attack(module, 0.02, cpu).alpha == (pytest.approx(2.5 * 0.02 / 5))
    mifgsm = build_attack("torchattacks:MIFGSM", {"decay": 0.5})
    assert mifgsm.library_attack(module, 0.03, cpu).decay == 0.5
    assert build_attack("torchattacks:PGD", {"alpha": 0.02}).params["step_size"] == 0.02

    ctx = context(linear_model())
    fpgd = build_attack("foolbox:LinfPGD", {"steps": 7, "step_size": 0.01, "random_start": False})
    lib = fpgd.library_attack(ctx)
    assert (lib.steps, lib.abs_stepsize, lib.random_start) == (7, 0.01, False)
    assert build_attack("foolbox:LinfPGD", {}).library_attack(ctx).abs_stepsize is None
    mom = build_attack("foolbox:MIFGSM", {"momentum": 0.5}).library_attack(ctx)
    assert mom.momentum == 0.5
    assert build_attack("foolbox:L2PGD", {"abs_stepsize": 0.1}).params["step_size"] == 0.1


def test_names_are_case_insensitive_and_foolbox_aliases_resolve() -> None:
    assert build_attack("torchattacks:pgdl2", {}).name == "torchattacks:PGDL2"
    assert build_attack("foolbox:PGD", {}).name == "foolbox:LinfPGD"
    fgsm = build_attack("foolbox:LinfFastGradientAttack", {})
    assert (fgsm.name, fgsm.family, fgsm.norms) == ("foolbox:FGSM", "single_step", ("linf",))
    pgd = build_attack("torchattacks:PGD", {})
    assert (pgd.library, pgd.family, pgd.norms) == ("torchattacks", "iterative", ("linf",))
    assert build_attack("torchattacks:FGSM", {}).family == "single_step"
    assert build_attack("foolbox:L2PGD", {}).library == "foolbox"


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("torchattacks:PGD", {"bogus": 1}, r"bogus.*accepted: steps, step_size"),
        ("torchattacks:FGSM", {"steps": 3}, "steps"),
        ("torchattacks:BIM", {"restarts": 2}, "restarts"),
        ("torchattacks:PGD", {"eps": 0.1}, "eps"),
        ("torchattacks:PGD", {"alpha": 0.1, "step_size": 0.1}, "alpha"),
        ("foolbox:LinfPGD", {"bogus": 1}, r"bogus.*accepted: steps, step_size"),
        ("foolbox:FGSM", {"step_size": 0.1}, "step_size"),
        ("foolbox:LinfPGD", {"epsilon": 0.1}, "epsilon"),
        ("foolbox:LinfPGD", {"step_size": 0.1, "rel_stepsize": 0.1}, "rel_stepsize"),
    ],
)
def test_bad_parameter_is_a_type_error_naming_it(name: str, params: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        build_attack(name, params)


def test_bad_values_are_value_errors() -> None:
    with pytest.raises(ValueError, match="steps"):
        build_attack("torchattacks:PGD", {"steps": 0})
    with pytest.raises(ValueError, match="restarts"):
        build_attack("foolbox:LinfPGD", {"restarts": 1.5})
    with pytest.raises(ValueError, match="loss='ce'"):
        build_attack("torchattacks:UPGD", {"loss": "dlr"})


@pytest.mark.parametrize("name", ["torchattacks:CW", "torchattacks:DIFGSM", "foolbox:L2FMNAttack"])
def test_unknown_attack_is_unavailable_and_lists_the_supported(name: str) -> None:
    with pytest.raises(AttackUnavailable, match=r"supported: .*PGD"):
        build_attack(name, {})


@pytest.mark.parametrize(
    ("library", "module"),
    [
        ("torchattacks", "audit.attacks.adapters.torchattacks"),
        ("foolbox", "audit.attacks.adapters.foolbox"),
    ],
)
def test_missing_library_is_unavailable_with_the_extra_to_install(
    monkeypatch, library: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # makes ``import <library>`` fail
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(AttackUnavailable, match=r"pip install 'pytest-segaudit\[attacks\]'"):
        build_attack(f"{library}:FGSM", {})


@pytest.mark.parametrize(
    ("name", "norm"),
    [
        ("torchattacks:PGD", "l2"),
        ("torchattacks:PGDL2", "linf"),
        ("foolbox:LinfPGD", "l2"),
        ("foolbox:L2PGD", "linf"),
        ("foolbox:FGSM", "l2"),
    ],
)
def test_wrong_norm_is_refused(name: str, norm: str) -> None:
    model = linear_model()
    images, labels = data(model)
    with pytest.raises(ValueError, match=f"not {norm}"):
        build_attack(name, {})(
            images, labels, threat=ThreatModel(norm, parse_epsilon(0.1)), ctx=context(model)
        )


def test_dense_criterion_counts_labelled_pixels_only() -> None:
    labels = torch.tensor([[[0, 1], [IGNORE, 1]], [[IGNORE, IGNORE], [IGNORE, IGNORE]]])
    logits = torch.zeros(2, 2, 2, 2)
    logits[:, 0] = 1.0  # predicts class 0 everywhere: 2 of 3 labelled pixels wrong in image 0
    loose = fb_adapter.DenseMisclassification(labels, ignore_index=IGNORE, threshold=0.6)
    strict = fb_adapter.DenseMisclassification(labels, ignore_index=IGNORE)
    assert loose(None, logits).tolist() == [True, False]  # nothing labelled: never adv.
    assert strict(None, logits).tolist() == [False, False]


# -- strength (issue acceptance): SegAudit's PGD is at least as strong as theirs ------------


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    from audit.data.synthetic import SyntheticStreetScenes
    from audit.model import load_model
    from audit.resources import demo_model_file

    module = load_model(demo_model_file()).module
    dataset = SyntheticStreetScenes(4, seed=0, size=(64, 128))
    images = torch.stack([dataset[i].image for i in range(len(dataset))])
    masks = torch.stack([dataset[i].mask for i in range(len(dataset))])
    with torch.no_grad():
        num_classes = module(images[:1]).shape[1]
    return module, images, masks, num_classes


STRENGTH = [
    ("linf", "4/255", ("torchattacks:PGD", "foolbox:LinfPGD")),
    ("linf", "2/255", ("torchattacks:PGD", "foolbox:LinfPGD")),
    ("l2", "0.5", ("torchattacks:PGDL2", "foolbox:L2PGD")),
]


@pytest.mark.parametrize(("norm", "eps", "theirs"), STRENGTH)
def test_native_pgd_is_at_least_as_strong(
    demo, norm: str, eps: str, theirs: tuple[str, ...], record_property
) -> None:
    """Same model, budget, steps and step size (2.5 * eps / steps), random start for all."""
    module, images, masks, num_classes = demo
    threat = ThreatModel(norm, parse_epsilon(eps))
    steps = 10
    step_size = 2.5 * threat.eps.value / steps
    before = fingerprint_module(module, include_grads=True)

    def miou_under(name: str) -> float:
        attack = build_attack(name, {"steps": steps, "step_size": step_size})
        ctx = AttackContext(
            model=module,
            ignore_index=IGNORE,
            num_classes=num_classes,
            generator=torch.Generator().manual_seed(0),
        )
        adv = attack(images, masks, threat=threat, ctx=ctx)
        with torch.no_grad():
            pred = module(adv).argmax(1)
        return float(metrics.miou(metrics.confusion_matrix(pred, masks, num_classes, IGNORE)))

    ours = miou_under("pgd")
    results = {name: miou_under(name) for name in theirs}
    record_property("miou", {"pgd": ours, **results})
    print(
        f"{norm} eps={eps}: mIoU under pgd {ours:.4f}; "
        + ", ".join(f"{name} {value:.4f}" for name, value in results.items())
    )
    for name, value in results.items():
        assert ours <= value + 0.01, f"native pgd ({ours:.4f}) weaker than {name} ({value:.4f})"
    assert fingerprint_module(module, include_grads=True) == before

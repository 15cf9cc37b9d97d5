"""Provable Lipschitz upper bounds (audit.certify.lipschitz) and the falsification search
(audit.certify.falsify).

Every bound is checked against the truth on small instances: for linear layers the exact
operator norm, the largest singular value of the dense Jacobian (an 8x8 input keeps it
small); for nonlinear models the Jacobian norm at random points, which any valid bound must
exceed.  Looseness is checked too, with the factor observed on these instances stated next
to each limit.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lipschitz_checks import N, exact_norm, jacobian_norm_at, seeded
from lipschitz_checks import double as _double
from torch import nn

from audit.certify.falsify import LowerBound, lipschitz_lower_bound
from audit.certify.lipschitz import LipschitzBound, UnsupportedLayer, lipschitz_bound
from audit.errors import EvaluationError
from audit.model import ModelMetadata, SegmentationWrapper, load_model
from audit.nets.demo_fcn import MaxMin
from audit.resources import demo_model_file


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo() -> SegmentationWrapper:
    return load_model(demo_model_file()).module


# --------------------------------------------------------------------------------------
# Linear layers against exact norms
# --------------------------------------------------------------------------------------

# (layer, max looseness for every input size, at the given size); the factors observed on
# these instances (3 seeds) are in the comments: unsized / sized.
CONVS = {
    "3x3 same": (lambda: nn.Conv2d(3, 5, 3, padding=1), 1.15, 1.10),  # 1.10 / 1.06
    "3x3 stride 2": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), 1.15, 1.12),  # 1.09 / 1.08
    "5x5 same": (lambda: nn.Conv2d(3, 3, 5, padding=2), 1.3, 1.25),  # 1.25 / 1.18
    "3x3 valid": (lambda: nn.Conv2d(3, 4, 3), 1.2, 1.15),  # 1.13 / 1.09
    "3x3 dilation 2": (lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2), 1.35, 1.3),  # 1.28/1.21
    "depthwise": (lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3), 1.2, 1.15),  # 1.13 / 1.10
    "padding='same'": (lambda: nn.Conv2d(3, 4, 3, padding="same"), 1.15, 1.1),  # 1.10 / 1.06
    "circular": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), 1.15, 1.001),
    "circular stride 2": (
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
        1.6,  # 1.32-1.47: without the size, the stride-1 symbol is used
        1.001,
    ),
    "1x1": (lambda: nn.Conv2d(3, 5, 1), 1.001, 1.001),  # exact SVD
    "2x2 stride 2": (lambda: nn.Conv2d(3, 4, 2, stride=2), 1.001, 1.001),  # polyphase: exact
    "transposed 4x4 stride 2": (
        lambda: nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1),
        1.1,  # 1.04
        1.05,  # 1.02
    ),
    "transposed depthwise": (
        lambda: nn.ConvTranspose2d(3, 3, 3, padding=1, groups=3),
        1.15,  # 1.09
        1.1,  # 1.06
    ),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_bound_is_above_exact_norm_and_not_loose(case: str) -> None:
    factory, loose_any, loose_sized = CONVS[case]
    for seed in range(2):
        layer = seeded(factory, seed)
        exact = exact_norm(layer)
        anywhere = lipschitz_bound(layer)
        sized = lipschitz_bound(layer, input_size=(N, N))
        assert exact <= anywhere.value <= loose_any * exact, (seed, exact, anywhere)
        assert exact <= sized.value <= loose_sized * exact, (seed, exact, sized)
        assert "every input size" in anywhere.method


def test_size_specific_bound_says_so() -> None:
    layer = seeded(lambda: nn.Conv2d(3, 5, 3, padding=1), 3)
    bound = lipschitz_bound(layer, input_size=(N, N))
    assert "8x8" in bound.method and "only" in bound.method
    with pytest.raises(ValueError, match="input_size"):
        lipschitz_bound(layer, input_size=(8, 0))


def test_schur_bound_is_used_for_near_orthogonal_kernels() -> None:
    # A kernel with an orthogonal centre tap: Schur is tight, so no refinement is needed.
    layer = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :, 1, 1] = torch.linalg.qr(torch.randn(3, 3))[0]
    bound = lipschitz_bound(layer)
    assert bound.value == pytest.approx(1.0, abs=1e-6)
    assert bound.layers[0].method.startswith("weighted Schur test")


def test_linear_is_exact() -> None:
    layer = seeded(lambda: nn.Linear(N, 5))  # acts on the last axis of 1 x 3 x 8 x 8
    exact = exact_norm(layer)
    bound = lipschitz_bound(layer, input_size=(N, N))
    assert exact <= bound.value <= exact * (1 + 1e-5)
    with pytest.raises(UnsupportedLayer, match=r"1 x 3 x 64x64 input.*input_size"):
        lipschitz_bound(layer)  # 64 x 64 probe: the last axis does not fit the weight


def test_batchnorm_is_exact() -> None:
    bn = nn.BatchNorm2d(3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(3, generator=gen))
        bn.running_var.copy_(torch.rand(3, generator=gen) + 0.1)
        bn.running_mean.copy_(torch.randn(3, generator=gen))
    bn.eval()
    assert lipschitz_bound(bn).value == pytest.approx(exact_norm(bn), rel=1e-9)


def test_batchnorm_in_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))  # training mode
    with pytest.raises(UnsupportedLayer, match=r"'1' \(BatchNorm2d\).*eval\(\)"):
        lipschitz_bound(model)


# (layer, max looseness for every input size or None where the size is required); at the
# given size these norms are exact (per-axis SVD), for every size the Schur test is used.
POOLS = {
    "avg 2/2": (lambda: nn.AvgPool2d(2), 1.0001),
    "avg 3/2 pad 1": (lambda: nn.AvgPool2d(3, 2, 1), 1.4),  # 1.32: borders
    "avg 3/1 pad 1": (lambda: nn.AvgPool2d(3, 1, 1), 1.15),  # 1.09
    "avg uncounted pad": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), None),
    "avg ceil mode": (lambda: nn.AvgPool2d(3, 2, ceil_mode=True), None),
    "adaptive avg 3": (lambda: nn.AdaptiveAvgPool2d(3), None),
    "bilinear x2": (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), None),
    "bilinear aligned": (lambda: nn.UpsamplingBilinear2d(size=(11, 13)), None),
    "nearest 8->12": (lambda: nn.Upsample(size=(12, 12)), None),
    "bicubic x1.5": (lambda: nn.Upsample(scale_factor=1.5, mode="bicubic"), None),
}


@pytest.mark.parametrize("case", list(POOLS))
def test_pooling_and_resizing_against_exact_norm(case: str) -> None:
    factory, loose_any = POOLS[case]
    layer = factory().eval()
    exact = exact_norm(layer)
    bound = lipschitz_bound(layer, input_size=(N, N))
    assert exact <= bound.value <= 1.0001 * exact
    if loose_any is None:
        with pytest.raises(UnsupportedLayer, match="input_size"):
            lipschitz_bound(layer)
    else:
        assert exact <= lipschitz_bound(layer).value <= loose_any * exact


def test_global_average_pooling_needs_no_size() -> None:
    bound = lipschitz_bound(nn.AdaptiveAvgPool2d(1))
    assert bound.value == 1.0
    assert exact_norm(nn.AdaptiveAvgPool2d(1)) <= 1.0


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "windows"),
    [(2, 2, 0, 1), (3, 2, 1, 4), (3, 1, 1, 9), (2, 1, 0, 4)],
)
def test_maxpool_bound_is_attained(kernel: int, stride: int, padding: int, windows: int) -> None:
    pool = nn.MaxPool2d(kernel, stride, padding)
    bound = lipschitz_bound(pool).value
    assert bound == pytest.approx(math.sqrt(windows))
    # An interior peak is the maximum of every window holding it: the Jacobian there has
    # norm sqrt(windows), so the bound is exact.
    x = torch.rand(1, 3, N, N, generator=torch.Generator().manual_seed(2)) * 0.1
    x[0, 0, 3, 3] = 1.0
    assert jacobian_norm_at(pool, x) == pytest.approx(bound)
    for seed in range(3):
        x = torch.rand(1, 3, N, N, generator=torch.Generator().manual_seed(seed))
        assert jacobian_norm_at(pool, x) <= bound + 1e-9


@pytest.mark.parametrize(
    "layer",
    [nn.PixelShuffle(2), nn.Identity(), nn.Flatten(), nn.Dropout(0.3).eval()],
    ids=["pixelshuffle", "identity", "flatten", "dropout"],
)
def test_permutations_are_one(layer: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), layer).eval()
    assert lipschitz_bound(model).value == pytest.approx(lipschitz_bound(model[0]).value)


def test_pixel_unshuffle_is_an_isometry() -> None:
    assert lipschitz_bound(nn.PixelUnshuffle(2)).value == 1.0
    assert exact_norm(nn.PixelUnshuffle(2)) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# Activations: constants against the largest derivative on a fine grid
# --------------------------------------------------------------------------------------

# (module, bound expected, max looseness vs the grid's largest |derivative|)
ACTIVATIONS = {
    "relu": (nn.ReLU(), 1.0, 1.0001),
    "leaky 0.2": (nn.LeakyReLU(0.2), 1.0, 1.0001),
    "leaky 1.5": (nn.LeakyReLU(1.5), 1.5, 1.0001),
    "elu 2": (nn.ELU(2.0), 2.0, 1.01),
    "tanh": (nn.Tanh(), 1.0, 1.0001),
    "sigmoid": (nn.Sigmoid(), 0.25, 1.0001),
    "hardsigmoid": (nn.Hardsigmoid(), 1 / 6, 1.0001),
    "hardswish": (nn.Hardswish(), 1.5, 1.01),
    "softplus": (nn.Softplus(), 1.0, 1.001),
    "gelu": (nn.GELU(), 1.2420, 1.11),  # true constant 1.1289: 1.10x
    "silu": (nn.SiLU(), 1.2297, 1.12),  # true constant 1.0998: 1.118x
    "relu6": (nn.ReLU6(), 1.0, 1.0001),
}


@pytest.mark.parametrize("case", list(ACTIVATIONS))
def test_activation_constants(case: str) -> None:
    module, expected, loose = ACTIVATIONS[case]
    bound = lipschitz_bound(module).value
    assert bound == pytest.approx(expected, abs=1e-4)
    t = torch.linspace(-12, 12, 200_001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(module(t).sum(), t)
    steepest = float(grad.abs().max())
    assert steepest <= bound <= loose * steepest


def test_gelu_tanh_approximation_is_refused() -> None:
    with pytest.raises(UnsupportedLayer, match="tanh approximation"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU(approximate="tanh")))


# --------------------------------------------------------------------------------------
# Graphs: residual sums, concatenations, MaxMin, composition
# --------------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), 2.0 * self.b(x)], dim=1)


def _layer(bound: LipschitzBound, name: str) -> float:
    (match,) = [layer.bound for layer in bound.layers if layer.name == name]
    return match


def test_residual_block_adds() -> None:
    model = seeded(Residual)
    bound = lipschitz_bound(model)
    assert bound.value == pytest.approx(1 + _layer(bound, "conv"), rel=1e-12)
    exact = exact_norm(model)
    # 1.19 observed: the triangle inequality ||x + Kx|| <= (1 + ||K||) ||x|| is not tight
    assert exact <= bound.value <= 1.3 * exact


def test_concatenation_adds_in_quadrature() -> None:
    model = seeded(Concat)
    bound = lipschitz_bound(model)
    a, b = _layer(bound, "a"), _layer(bound, "b")
    assert bound.value == pytest.approx(math.hypot(a, 2 * b), rel=1e-12)
    exact = exact_norm(model)
    assert exact <= bound.value <= 1.2 * exact  # 1.09 observed


class HandMaxMin(nn.Module):
    """MaxMin written out in a model's own code: traced op by op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(x, 2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


@pytest.mark.parametrize("activation", [MaxMin, HandMaxMin], ids=["module", "traced"])
def test_maxmin_is_one(activation: type[nn.Module]) -> None:
    model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 1), activation()))
    assert lipschitz_bound(model).value == pytest.approx(lipschitz_bound(model[0]).value)


def test_maxmin_with_odd_channels_is_refused() -> None:
    with pytest.raises(UnsupportedLayer, match="even number of channels"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(3, 3, 1), MaxMin()))


class SmallNet(nn.Module):
    """conv-bn-relu, a residual block with a strided pool, a concat and a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.inner = nn.Conv2d(6, 6, 3, padding=1)
        self.side = nn.Conv2d(6, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.stem(x)))
        y = y + 0.5 * F.leaky_relu(self.inner(y), 0.1)
        y = torch.cat([y, self.side(y)], dim=1)
        return self.head(self.pool(y))


def test_composition_follows_the_rules_and_bounds_the_jacobian() -> None:
    model = seeded(SmallNet, 4)
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(-1.5, 1.5)
    bound = lipschitz_bound(model)
    b = {layer.name: layer.bound for layer in bound.layers}
    trunk = b["stem"] * b["bn"] * (1 + 0.5 * b["inner"])
    expected = trunk * math.hypot(1, b["side"]) * b["pool"] * b["head"]
    assert bound.value == pytest.approx(expected, rel=1e-12)
    for seed in range(3):
        x = torch.rand(1, 3, N, N, generator=torch.Generator().manual_seed(seed))
        assert jacobian_norm_at(model, x) <= bound.value


def test_export_program_gives_the_eager_bound() -> None:
    model = seeded(SmallNet, 5)
    program = torch.export.export(model, (torch.rand(1, 3, N, N),))
    eager = lipschitz_bound(model).value
    assert lipschitz_bound(program.module()).value == pytest.approx(eager, rel=1e-12)


# --------------------------------------------------------------------------------------
# The wrapper: normalisation and resizing of the logits
# --------------------------------------------------------------------------------------


def test_normalisation_multiplies_by_one_over_std() -> None:
    conv = seeded(lambda: nn.Conv2d(3, 4, 1))
    metadata = ModelMetadata(mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2))
    wrapper = SegmentationWrapper(conv, metadata)
    bound = lipschitz_bound(wrapper)
    conv_norm = lipschitz_bound(conv).value
    assert bound.value == pytest.approx(5 * conv_norm, rel=1e-6)  # not conv_norm / 5
    exact = exact_norm(wrapper)
    assert exact <= bound.value <= exact * (1 + 1e-5)
    # Different stds: the smallest one rules.
    mixed = SegmentationWrapper(conv, ModelMetadata(mean=(0, 0, 0), std=(0.2, 0.5, 1.0)))
    assert exact_norm(mixed) <= lipschitz_bound(mixed).value == pytest.approx(bound.value)


def test_wrapper_resize_of_low_resolution_logits() -> None:
    model = seeded(lambda: nn.Conv2d(3, 4, 2, stride=2))  # predicts at half resolution
    wrapper = SegmentationWrapper(model, ModelMetadata(input_size=(N, N)))
    bound = lipschitz_bound(wrapper)
    exact = exact_norm(wrapper)
    assert exact <= bound.value <= 1.05 * exact  # 1.00 observed: both factors exact
    assert any(layer.name == "<resize>" for layer in bound.layers)
    assert "8x8" in bound.method
    with pytest.raises(UnsupportedLayer, match="input_size"):
        lipschitz_bound(SegmentationWrapper(model))


def test_wrapper_dict_output() -> None:
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.aux = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"aux": self.aux(x), "out": F.avg_pool2d(self.conv(x), 2)}

    model = seeded(Dict)
    wrapper = SegmentationWrapper(model, ModelMetadata(input_size=(N, N)))
    bound = lipschitz_bound(wrapper)
    # Whichever output the wrapper picks (here the low-resolution 'out', resized), the
    # bound covers it.
    assert bound.value >= exact_norm(wrapper)
    assert any(layer.name == "<resize>" for layer in bound.layers)


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class WithSquare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.block = nn.Sequential(nn.Identity(), Square())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x))


@pytest.mark.parametrize(("mode", "copies"), [("reflect", 4), ("replicate", 9)])
def test_copying_padding_is_bounded_by_its_copies(mode: str, copies: int) -> None:
    # The pad repeats border entries (a pad of 1 copies an entry twice per axis; for every
    # size, a 1-pixel-wide replicate input thrice), then the unpadded convolution: sound,
    # if loose (1.8x measured at the input size on this kernel).
    model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode=mode)))
    bound = lipschitz_bound(model)
    (layer,) = bound.layers
    assert layer.name == "0" and f"{mode} padding (up to {copies} copies" in layer.method
    exact = exact_norm(model)
    assert exact <= bound.value <= 1.5 * math.sqrt(copies) * exact
    sized = lipschitz_bound(model, input_size=(N, N))
    assert "up to 4 copies" in sized.layers[0].method
    assert exact <= sized.value <= 2.5 * exact


def test_unknown_operation_names_the_layer() -> None:
    with pytest.raises(UnsupportedLayer, match=r"'block\.1' \(Square\).*'mul'") as info:
        lipschitz_bound(WithSquare().eval())
    assert "two input-dependent tensors" in str(info.value)


def test_unknown_module_type_names_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4))
    with pytest.raises(UnsupportedLayer, match=r"'1' \(GroupNorm\)"):
        lipschitz_bound(model)


def test_conv_subclass_with_its_own_forward_is_traced_through() -> None:
    class Doubled(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    layer = seeded(lambda: Doubled(3, 4, 1))
    plain = nn.Conv2d(3, 4, 1)
    plain.load_state_dict(layer.state_dict())
    assert lipschitz_bound(layer).value == pytest.approx(2 * lipschitz_bound(plain).value)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + y.relu_()


@pytest.mark.parametrize("front_end", ["fx", "torchscript"])
def test_inplace_update_of_a_shared_tensor_is_refused(front_end: str) -> None:
    model = Shared() if front_end == "fx" else torch.jit.script(Shared())
    with pytest.raises(UnsupportedLayer, match="in-place"):
        lipschitz_bound(model)


def test_input_dependent_kernel_is_refused() -> None:
    class Dynamic(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, x[:, :, :3, :3].expand(3, 3, 3, 3).contiguous())

    with pytest.raises(UnsupportedLayer, match="conv2d"):
        lipschitz_bound(Dynamic())


# --------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------


def test_demo_model_bound(demo: SegmentationWrapper) -> None:
    bound = lipschitz_bound(demo)
    assert 1.0 <= bound.value <= 1.001
    assert bound.value <= demo.metadata.lipschitz  # its metadata says 1.0002
    kinds = [layer.kind for layer in bound.layers]
    assert kinds.count("Conv2d") == 7 and kinds.count("MaxMin") == 6
    as_dict = json.loads(json.dumps(bound.to_dict()))
    assert as_dict["value"] == bound.value and as_dict["layers"][0]["kind"] == "Conv2d"


def _traced(model: nn.Module, size: int = N) -> torch.jit.ScriptModule:
    return torch.jit.trace(model.eval(), torch.rand(1, 3, size, size))


def test_traced_sequential_matches_its_eager_twin() -> None:
    model = seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.LeakyReLU(0.3)),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(6, 4, 3, padding=1, padding_mode="circular"),
        )
    )
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    eager = lipschitz_bound(model, input_size=(N, N))
    traced = lipschitz_bound(_traced(model), input_size=(N, N))
    assert traced.value == pytest.approx(eager.value, rel=1e-12)
    assert [layer.bound for layer in traced.layers if layer.bound != 1] == pytest.approx(
        [layer.bound for layer in eager.layers if layer.bound != 1]
    )


# --------------------------------------------------------------------------------------
# Falsification: lower bounds from real pairs of inputs
# --------------------------------------------------------------------------------------


def _ratio(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - model(y)).norm() / (x - y).norm())


def _images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_lower_bound_of_a_per_pixel_linear_model() -> None:
    conv = seeded(lambda: nn.Conv2d(3, 5, 1), 7)
    s = float(torch.linalg.matrix_norm(conv.weight.detach()[:, :, 0, 0].double(), ord=2))
    found = lipschitz_lower_bound(conv, _images(), generator=torch.Generator().manual_seed(0))
    assert isinstance(found, LowerBound)
    assert 0.99 * s <= found.value <= s + 1e-6
    assert found.x.shape == found.y.shape == (1, 3, 16, 16)
    assert float(found.x.min()) >= 0 and float(found.y.max()) <= 1
    assert _ratio(_double(conv), found.x, found.y) == pytest.approx(found.value, rel=1e-9)


def test_lower_bound_never_exceeds_the_demo_upper_bound(demo: SegmentationWrapper) -> None:
    upper = lipschitz_bound(demo).value
    found = lipschitz_lower_bound(
        demo, _images(2, 32), generator=torch.Generator().manual_seed(0), ascent_steps=20
    )
    assert 0.5 < found.value <= upper
    assert "float64" in found.method
    assert _ratio(_double(demo), found.x, found.y) == pytest.approx(found.value, rel=1e-9)


def test_lower_bound_falsifies_a_scaled_demo_model(demo: SegmentationWrapper) -> None:
    def scaled(x: torch.Tensor) -> torch.Tensor:
        return 5 * demo(x)

    found = lipschitz_lower_bound(
        scaled, _images(2, 32), generator=torch.Generator().manual_seed(0), ascent_steps=20
    )
    assert found.value > 1.0002  # a claimed L = 1 (or the metadata's 1.0002) is refuted
    assert found.value > 4
    # The pair reproduces the ratio (float32 here: minus the rounding allowance it reports).
    assert _ratio(scaled, found.x, found.y) == pytest.approx(found.value, rel=1e-2)
    assert _ratio(scaled, found.x, found.y) >= found.value


class OnceDifferentiable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return 3 * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return 3 * grad


def test_lower_bound_without_double_backward_uses_finite_differences() -> None:
    class Tripled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return OnceDifferentiable.apply(self.conv(x))

    model = seeded(Tripled, 9)
    s = 3 * float(torch.linalg.matrix_norm(model.conv.weight.detach()[:, :, 0, 0].double(), ord=2))
    found = lipschitz_lower_bound(
        model, _images(1, N), generator=torch.Generator().manual_seed(0), ascent_steps=5
    )
    assert 0.99 * s <= found.value <= s + 1e-6


def test_lower_bound_refuses_a_model_in_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    with pytest.raises(EvaluationError, match="training mode"):
        lipschitz_lower_bound(model, _images(1, N), generator=torch.Generator().manual_seed(0))
    assert int(model[1].num_batches_tracked) == 0


def test_lower_bound_is_deterministic_and_leaves_the_model_alone() -> None:
    model = seeded(SmallNet, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [
        lipschitz_lower_bound(
            model,
            _images(2, N),
            generator=torch.Generator().manual_seed(3),
            power_steps=10,
            ascent_steps=10,
        )
        for _ in range(2)
    ]
    assert runs[0].value == runs[1].value
    assert torch.equal(runs[0].y, runs[1].y)
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    assert runs[0].value <= lipschitz_bound(model).value

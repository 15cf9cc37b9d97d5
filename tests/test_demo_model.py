"""The bundled demo model: artifact format, Lipschitz guarantees and clean accuracy.

The norm checks use exact SVDs of unrolled convolution operators (small inputs keep them
tractable); the Lipschitz check on the whole model also searches for bad pairs by gradient
ascent, since random pairs rarely come close to the worst case.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audit.nets.demo_fcn import (
    AOLConv2d,
    LipschitzSegNet,
    MaxMin,
    conv_norm_upper_bound,
    lipschitz_upper_bound,
    to_plain_conv,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "audit" / "assets" / "demo_segnet.pt"
SCRIPT = REPO / "scripts" / "train_demo_model.py"
META_KEYS = {
    "name",
    "num_classes",
    "class_names",
    "ignore_index",
    "input_size",
    "mean",
    "std",
    "lipschitz",
    "lipschitz_source",
}
# Clean mIoU on the first 8 seed-0 validation images; the trained model scores well above it.
MIOU_FLOOR = 0.70


def dense_operator(weight: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """The convolution (no bias) on a size x size input as a dense float64 matrix."""
    c_in = weight.shape[1]
    basis = torch.eye(c_in * size * size, dtype=torch.float64).reshape(-1, c_in, size, size)
    out = F.conv2d(basis, weight.double(), padding=padding)
    return out.reshape(len(basis), -1).T


def spectral_norm(weight: torch.Tensor, size: int, padding: int) -> float:
    return torch.linalg.matrix_norm(dense_operator(weight, size, padding), ord=2).item()


@pytest.fixture(scope="module")
def artifact() -> tuple[torch.jit.ScriptModule, dict]:
    extra = {"audit.json": ""}
    model = torch.jit.load(str(ARTIFACT), _extra_files=extra)
    return model.eval(), json.loads(extra["audit.json"])


@pytest.fixture(scope="module")
def traced_convs(artifact) -> list[tuple[torch.Tensor, torch.Tensor, torch.jit.ScriptModule]]:
    """(weight, bias, submodule) for each convolution of the traced model, in order."""
    model, _ = artifact
    convs = []
    for _, sub in model.named_children():
        if sub.original_name == "Conv2d":
            convs.append((sub.weight.detach(), sub.bias.detach(), sub))
    return convs


def test_artifact_is_small() -> None:
    assert ARTIFACT.stat().st_size < 5_000_000


def test_metadata(artifact) -> None:
    _, meta = artifact
    assert set(meta) == META_KEYS
    assert meta["name"] == "segaudit-demo-lipschitz-fcn"
    assert meta["num_classes"] == 8 == len(meta["class_names"])
    assert meta["class_names"][:4] == ["road", "sidewalk", "building", "sky"]
    assert meta["ignore_index"] == 255
    assert meta["input_size"] == [128, 256]
    assert meta["mean"] is None and meta["std"] is None
    assert 1.0 <= meta["lipschitz"] <= 1.001
    assert "Schur" in meta["lipschitz_source"]


def test_layers_are_plain(artifact) -> None:
    model, _ = artifact
    names = [sub.original_name for _, sub in model.named_children()]
    assert names[0] == "PixelUnshuffle" and names[-1] == "PixelShuffle"
    assert set(names[1:-1]) <= {"Conv2d", "MaxMin", "PixelUnshuffle", "PixelShuffle"}
    assert names.count("Conv2d") == names.count("MaxMin") + 1


@pytest.mark.parametrize("size", [(128, 256), (64, 96)])
def test_output_shape(artifact, size: tuple[int, int]) -> None:
    model, meta = artifact
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, meta["num_classes"], *size)
    assert torch.isfinite(out).all()


def test_traced_convs_are_same_zero_padded(traced_convs) -> None:
    """The norm checks below assume "same" zero padding: confirm it on the traced layers."""
    gen = torch.Generator().manual_seed(1)
    for weight, bias, sub in traced_convs:
        x = torch.randn(1, weight.shape[1], 9, 11, generator=gen)
        with torch.no_grad():
            expected = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)
            torch.testing.assert_close(sub(x), expected)


def test_traced_convs_have_norm_at_most_one(traced_convs) -> None:
    for weight, _, _ in traced_convs:
        pad = weight.shape[-1] // 2
        # All channels at 4x4, and 8x8 on a channel slice: a slice of the operator cannot have
        # a larger norm than the operator, so each is a necessary condition for the bound.
        assert spectral_norm(weight, 4, pad) <= 1 + 1e-4
        assert spectral_norm(weight[:12, :12], 8, pad) <= 1 + 1e-4
        assert conv_norm_upper_bound(weight) <= 1 + 1e-4


def test_metadata_constant_bounds_the_exported_weights(artifact) -> None:
    model, meta = artifact
    product = math.prod(
        conv_norm_upper_bound(sub.weight)
        for sub in model.children()
        if sub.original_name == "Conv2d"
    )
    assert product <= meta["lipschitz"]


def _ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)


def test_traced_model_is_lipschitz(artifact) -> None:
    model, meta = artifact
    bound = meta["lipschitz"]
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 32, 64, generator=gen)
    far = torch.rand(4, 3, 32, 64, generator=gen)
    near = x + 0.05 * torch.randn(4, 3, 32, 64, generator=gen)
    with torch.no_grad():
        assert (_ratio(model, x, far) <= bound).all()
        assert (_ratio(model, x, near) <= bound).all()

    # Gradient ascent on the ratio from the near pairs: the strongest cheap search for a
    # violation.  Float32 rounding of the difference is far below the slack at this distance.
    x = x.clone().requires_grad_(True)
    delta = (near - x).detach().requires_grad_(True)
    opt = torch.optim.Adam([x, delta], lr=0.01)
    start = _ratio(model, x, x + delta).detach()
    for _ in range(15):
        ratio = _ratio(model, x, x + delta)
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    with torch.no_grad():
        final = _ratio(model, x, x + delta)
    assert (final > start).any(), "the ascent should make progress, or it tests nothing"
    assert (final <= bound).all(), final.max().item()


@pytest.mark.parametrize(("c_in", "c_out"), [(6, 4), (4, 10), (8, 8)])
def test_aol_conv_norm_at_most_one_for_random_weights(c_in: int, c_out: int) -> None:
    torch.manual_seed(c_in * 100 + c_out)
    conv = AOLConv2d(c_in, c_out)
    nn.init.normal_(conv.kernel)  # far from the near-orthogonal initialisation
    raw = spectral_norm(conv.kernel.detach(), 8, 1)
    weight = conv.effective_weight().detach()
    for size in (4, 8):
        assert spectral_norm(weight, size, 1) <= 1 + 1e-6
    assert raw > 2, "the unconstrained kernel should be far from 1-Lipschitz"
    # The exported plain layer computes the same function and keeps the bound.
    plain = conv.to_conv2d()
    x = torch.randn(2, c_in, 8, 8)
    torch.testing.assert_close(plain(x), conv(x))
    assert spectral_norm(plain.weight.detach(), 8, 1) <= 1 + 1e-6


@pytest.mark.parametrize("size", [4, 8])
def test_schur_bound_is_an_upper_bound_for_any_kernel(size: int) -> None:
    gen = torch.Generator().manual_seed(size)
    for c_in, c_out in [(3, 5), (6, 2)]:
        weight = torch.randn(c_out, c_in, 3, 3, generator=gen)
        exact = spectral_norm(weight, size, 1)
        assert exact <= conv_norm_upper_bound(weight)


def test_maxmin_is_a_pairwise_sort() -> None:
    x = torch.tensor([[[[1.0]], [[5.0]], [[4.0]], [[2.0]]]])
    assert MaxMin()(x).flatten().tolist() == [4.0, 5.0, 1.0, 2.0]


def test_schur_bound_uses_the_adjoint_for_wide_to_narrow_layers() -> None:
    # A row-orthogonal centre tap (4 outputs, 8 inputs) has norm exactly 1, but K^T K is only
    # a projector: the bound must come from the adjoint's Gram, the identity.
    rows = torch.linalg.qr(torch.randn(8, 4, generator=torch.Generator().manual_seed(5)))[0].T
    weight = torch.zeros(4, 8, 3, 3)
    weight[:, :, 1, 1] = rows
    assert spectral_norm(weight, 6, 1) == pytest.approx(1.0, abs=1e-6)
    assert conv_norm_upper_bound(weight) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("inner_depth", [0, 2, 3])
def test_architecture_export_matches_and_is_bounded(inner_depth: int) -> None:
    torch.manual_seed(3)
    net = LipschitzSegNet(num_classes=3, width=8, depth=2, inner_depth=inner_depth).eval()
    for layer in net.layers:
        if isinstance(layer, AOLConv2d):
            nn.init.normal_(layer.kernel)
    plain = net.export()
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(plain(x), out)
    assert out.shape == (2, 3, 16, 24)
    bound, factors = lipschitz_upper_bound(plain)
    assert len(factors) == 3 + inner_depth
    assert bound <= 1 + 1e-6


def test_orthogonium_layers_export_with_norm_one() -> None:
    """The convolutions the training script builds with orthogonium (optional dependency)."""
    pytest.importorskip("orthogonium")
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(4)
    make = script.conv_factory("aoc")
    for c_in, c_out in [(12, 8), (8, 8), (8, 16)]:
        layer = make(c_in, c_out)
        plain = to_plain_conv(layer)
        x = torch.randn(2, c_in, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), layer(x))
        weight = plain.weight.detach()
        assert spectral_norm(weight, 8, 1) <= 1 + 1e-4
        assert conv_norm_upper_bound(weight) <= 1 + 1e-4


def test_lipschitz_upper_bound_refuses_unknown_layers() -> None:
    with pytest.raises(TypeError, match="ReLU"):
        lipschitz_upper_bound(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()))
    with pytest.raises(TypeError, match="unsupported conv"):
        lipschitz_upper_bound(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))


def test_clean_miou_on_validation_subset(artifact) -> None:
    from audit.data.synthetic import SyntheticStreetScenes

    model, meta = artifact
    ds = SyntheticStreetScenes(num_samples=8, seed=0, size=tuple(meta["input_size"]))
    samples = [ds[i] for i in range(len(ds))]
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples])
    with torch.no_grad():
        pred = model(images).argmax(dim=1)
    k = meta["num_classes"]
    keep = masks != meta["ignore_index"]
    conf = torch.bincount(masks[keep] * k + pred[keep], minlength=k * k).reshape(k, k).double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    miou = (tp[union > 0] / union[union > 0]).mean().item()
    assert miou >= MIOU_FLOOR

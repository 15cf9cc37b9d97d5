"""Bounds of networks built with orthogonium and deel-torchlip, the libraries the Massena
et al. models are built with, in every format each can be saved in.

These need the ``lipnets`` extra, which ``make setup`` installs; without it this module
fails to import rather than skip, so that CI cannot pass without running it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from deel import torchlip
from lipschitz_checks import saved_formats, seeded, steepest
from orthogonium.layers.conv.AOC.ortho_conv import AdaptiveOrthoConv2d
from orthogonium.layers.custom_activations import MaxMin
from orthogonium.layers.residual import AdditiveResidual
from torch import nn

from audit.certify.falsify import lipschitz_lower_bound
from audit.certify.lipschitz import lipschitz_bound

SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class OrthoASPP(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1 = AdaptiveOrthoConv2d(c, c, 1)
        self.b2 = AdaptiveOrthoConv2d(c, c, 3, dilation=2, padding=2)
        self.proj = AdaptiveOrthoConv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two 1-Lipschitz branches side by side: sqrt(2), undone by the scaling
        return self.proj(torch.cat([self.b1(x), self.b2(x)], 1)) / math.sqrt(2)


class OrthoNet(nn.Module):
    """orthogonium's defaults: circular padding, MaxMin (torch.max/min of two halves),
    a residual, an ASPP-like concatenation, a strided convolution, a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = AdaptiveOrthoConv2d(3, 8, 3, padding=1)
        self.act = MaxMin()
        block = nn.Sequential(AdaptiveOrthoConv2d(8, 8, 3, padding=1), MaxMin())
        self.res = AdditiveResidual(block)
        self.down = AdaptiveOrthoConv2d(8, 8, 2, stride=2, padding=0)
        self.aspp = OrthoASPP(8)
        self.head = AdaptiveOrthoConv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.aspp(self.down(self.res(self.act(self.stem(x)))))
        y = F.interpolate(self.head(y), scale_factor=2, mode="bilinear", align_corners=False)
        return {"out": y}


class TorchlipNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torchlip.Sequential(
            torchlip.SpectralConv2d(3, 8, 3, padding=1),
            torchlip.GroupSort2(),
            torchlip.SpectralConv2d(8, 8, 3, padding=1),
            torchlip.FullSort(),
            torchlip.SpectralConv2d(8, 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _bounds(model: nn.Module, folder: Path, *, script: bool) -> dict[str, float]:
    found = {}
    for fmt, loaded in saved_formats(model, folder, script=script, size=SIZE).items():
        found[fmt] = lipschitz_bound(loaded, input_size=(SIZE, SIZE)).value
    first = found["eager"]
    # The parametrised weights are recomputed in float32 at each call (orthogonium's power
    # iterations): formats agree to that rounding, not to the last bit.
    assert all(v == pytest.approx(first, rel=1e-6) for v in found.values()), found
    return found


def _lower(model: nn.Module) -> float:
    def logits(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out["out"] if isinstance(out, dict) else out

    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    found = lipschitz_lower_bound(
        logits, images, generator=torch.Generator().manual_seed(0), ascent_steps=20
    )
    return found.value


def test_orthogonium_network_in_every_format(tmp_path: Path) -> None:
    model = seeded(OrthoNet)
    # torch.jit.script cannot compile orthogonium's parametrisations (a loop over a
    # tensor): tracing, export and the eager module are the formats it can be saved in.
    found = _bounds(model, tmp_path, script=False)
    assert set(found) == {"eager", "trace", "export"}
    bound = found["eager"]
    # Every layer is orthogonal and MaxMin, the residual and the scaled concatenation are
    # 1-Lipschitz: the network is 1-Lipschitz up to the bilinear x2 resize, whose exact
    # norm is 2.  The bound is that product, up to the SVD and Schur margins.
    assert bound == pytest.approx(2.0, rel=1e-4)
    assert _lower(model) <= bound
    assert steepest(model, size=SIZE, points=2, float64=False) <= bound


def test_orthogonium_layers_with_circular_padding_are_tight(tmp_path: Path) -> None:
    conv = seeded(lambda: AdaptiveOrthoConv2d(3, 4, 3, padding=1))  # circular by default
    model = nn.Sequential(conv, MaxMin())
    found = _bounds(model, tmp_path, script=False)
    exact = steepest(model, size=SIZE, points=2, float64=False)
    assert exact == pytest.approx(1.0, abs=1e-4)  # an orthogonal convolution, then MaxMin
    assert exact <= found["eager"] <= 1.0001


def test_torchlip_network_in_every_format(tmp_path: Path) -> None:
    model = seeded(TorchlipNet)
    # Its parametrised layers do not compile with torch.jit.script either.
    found = _bounds(model, tmp_path, script=False)
    bound = found["eager"]
    # GroupSort2 and FullSort cost 1: the bound is the product of the convolutions'
    layers = lipschitz_bound(model, input_size=(SIZE, SIZE)).layers
    convs = [layer.bound for layer in layers if "conv" in layer.kind.lower()]
    assert len(convs) == 3
    assert bound == pytest.approx(math.prod(convs), rel=1e-9)
    assert _lower(model) <= bound
    assert steepest(model, size=SIZE, points=2, float64=False) <= bound


def test_torchlip_vanilla_export_in_every_format(tmp_path: Path) -> None:
    model = seeded(TorchlipNet)
    reference = lipschitz_bound(model, input_size=(SIZE, SIZE)).value
    vanilla = TorchlipNet()
    vanilla.body = model.body.vanilla_export()
    vanilla.eval()
    # plain nn.Conv2d layers: torch.jit.script compiles it now
    found = _bounds(vanilla, tmp_path, script=True)
    assert set(found) == {"eager", "trace", "script", "export"}
    assert found["eager"] == pytest.approx(reference, rel=1e-6)

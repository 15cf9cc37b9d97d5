"""Engine: shared cache, batching by size, determinism, and no mutation of the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from audit.data import open_dataset
from audit.devices import resolve_device
from audit.engine import Engine, cache_key
from audit.errors import ConfigError, EvaluationError
from audit.evaluations import evaluate_clean
from audit.model import fingerprint_module, load_model
from conftest import ColourNet, save_torchscript


class BatchNormNet(nn.Module):
    """A model with buffers that change if anything runs it in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def make_engine(model: nn.Module, tmp_path: Path, **kwargs) -> Engine:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    factory_module = tmp_path / "factories_for_engine.py"
    factory_module.write_text(
        "from test_engine import BatchNormNet\ndef build():\n    return BatchNormNet()\n"
    )
    loaded = load_model(path, factory="factories_for_engine:build")
    return Engine(loaded, open_dataset("synthetic?n=6&size=32x64"), **kwargs)


def test_audit_leaves_parameters_buffers_and_flags_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    engine = make_engine(BatchNormNet(), tmp_path, batch_size=4)
    inner = engine.model.module.model
    inner.train()  # a user's model left in train mode must not learn batch statistics
    inner.conv.weight.requires_grad_(False)
    before = fingerprint_module(inner, include_grads=True)
    evaluate_clean(engine)
    after = fingerprint_module(inner, include_grads=True)
    # Only the documented change: the audit evaluates in eval mode.
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= {k for k in before if k.startswith("training:")}
    assert inner.conv.weight.requires_grad is False
    assert inner.conv.bias.requires_grad is True


def test_clean_evaluation_is_cached_and_counts_forward_passes(tiny_model: Path) -> None:
    engine = Engine(load_model(tiny_model), open_dataset("synthetic?n=5&size=32x64"), batch_size=2)
    first = evaluate_clean(engine)
    assert engine.forward_passes == 3  # 2 + 2 + 1 images
    assert evaluate_clean(engine) is first
    assert engine.forward_passes == 3
    assert first.num_samples == 5 and first.per_image.shape == (5, 8, 8)
    assert first.resolution == (32, 64)
    assert first.num_pixels == int(first.confusion.sum())


def test_limit_and_determinism(tiny_model: Path) -> None:
    data = "synthetic?n=6&size=32x64"
    a = evaluate_clean(Engine(load_model(tiny_model), open_dataset(data), limit=3))
    b = evaluate_clean(Engine(load_model(tiny_model), open_dataset(data), limit=3, batch_size=1))
    assert a.num_samples == 3
    assert torch.equal(a.per_image, b.per_image)
    assert a.sample_names == b.sample_names


def test_score_interval_and_unknown_class(tiny_model: Path) -> None:
    engine = Engine(load_model(tiny_model), open_dataset("synthetic?n=4&size=32x64"))
    clean = evaluate_clean(engine)
    value, interval = engine.score(clean.per_image, "miou")
    assert 0.0 <= value <= 1.0 and interval is not None
    assert interval.low <= value <= interval.high
    with pytest.raises(KeyError, match="unknown class 'bus'"):
        engine.score(clean.per_image, "class_iou:bus")


def test_batches_split_where_image_size_changes(tiny_model: Path) -> None:
    class MixedSizes:
        kind = "mixed"
        class_names = tuple(f"c{i}" for i in range(8))
        ignore_index = 255
        palette = tuple((i, i, i) for i in range(8))

        def __init__(self) -> None:
            self.inner = open_dataset("synthetic?n=4&size=32x64")
            self.other = open_dataset("synthetic?n=4&size=48x64")

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return (self.inner if i < 2 else self.other)[i]

        def fingerprint(self) -> str:
            return "mixed"

    engine = Engine(load_model(tiny_model), MixedSizes(), batch_size=8)  # type: ignore[arg-type]
    shapes = [tuple(b.images.shape) for b in engine.batches()]
    assert shapes == [(2, 3, 32, 64), (2, 3, 48, 64)]
    assert evaluate_clean(engine).resolution is None


def test_failures_are_cached_and_raised_for_every_claim(tmp_path: Path) -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 8, *x.shape[-2:]), float("nan"))

    model = save_torchscript(Boom(), tmp_path / "boom.pt")
    engine = Engine(load_model(model), open_dataset("synthetic?n=2&size=32x64"))
    with pytest.raises(EvaluationError, match="synthetic-000000"):
        evaluate_clean(engine)
    passes = engine.forward_passes
    with pytest.raises(EvaluationError):
        evaluate_clean(engine)
    assert engine.forward_passes == passes


def test_cache_key_is_canonical() -> None:
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA was requested but is not available"):
            resolve_device("cuda:0")


def test_colour_net_fixture_is_per_pixel() -> None:
    net = ColourNet()
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 8, 8, 8)


def test_the_noise_baseline_of_a_grid_is_one_pass_and_equals_separate_runs(
    tiny_model: Path,
) -> None:
    from audit.evaluations import evaluate_noise
    from audit.threat import ThreatModel, parse_epsilon

    def _engine(model: Path, **kwargs) -> Engine:
        return Engine(load_model(model), open_dataset("synthetic?n=5&size=32x64"), **kwargs)

    grid = [ThreatModel("linf", parse_epsilon(f"{k}/255")) for k in (1, 2, 4, 8)]
    shared = _engine(tiny_model, batch_size=8)
    first = evaluate_noise(shared, grid[0], sweep=grid)
    # 5 images in one batch: one clean pass and one per epsilon, not two per epsilon
    assert first.forward_passes == 1 + len(grid) and first.shared_by == len(grid)
    alone = _engine(tiny_model, batch_size=8)
    for threat in grid:
        together, apart = evaluate_noise(shared, threat), evaluate_noise(alone, threat)
        assert torch.equal(together.per_image, apart.per_image)
        assert torch.equal(together.l2, apart.l2)
    assert shared.forward_passes == 1 + len(grid) and alone.forward_passes == 2 * len(grid)

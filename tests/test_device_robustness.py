"""Running out of device memory (retried with half the batch, recorded), attacks in reduced
precision (never certificates), and images loaded by worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.data import open_dataset
from audit.engine import Engine
from audit.errors import EvaluationError
from audit.evaluations import certify_lipschitz, evaluate_attack, evaluate_clean
from audit.model import load_model
from audit.threat import ThreatModel, parse_epsilon

DATA = "synthetic?n=5&size=32x64"


class Tight(nn.Module):
    """The model on a device that holds at most ``most`` images at a time."""

    def __init__(self, inner: nn.Module, most: int) -> None:
        super().__init__()
        self.inner = inner
        self.most = most
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > self.most:
            # what CUDA raises; constructible without a GPU
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {x.shape[0]} images (test)"
            )
        return self.inner(x)


def _engine(model: Path, **kwargs) -> Engine:
    return Engine(load_model(model), open_dataset(DATA), **kwargs)


def test_out_of_memory_retries_with_half_the_batch_and_says_so(tiny_model: Path) -> None:
    reference = _engine(tiny_model, batch_size=1)
    engine = _engine(tiny_model, batch_size=4)
    engine.module = Tight(engine.module, most=1)
    clean = evaluate_clean(engine)
    assert torch.equal(clean.per_image, evaluate_clean(reference).per_image)
    (retry,) = engine.memory_retries.values()
    assert retry == {"evaluation": "clean", "batch_sizes": [4, 2, 1]}
    # the next evaluation starts again from the configured size
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    attacked = evaluate_attack(engine, "fgsm", {}, threat)
    assert torch.equal(attacked.per_image, evaluate_attack(reference, "fgsm", {}, threat).per_image)
    assert engine.module.sizes.count(4) == 2  # clean, then the attack: each tried 4 first
    assert [r["batch_sizes"] for r in engine.memory_retries.values()] == [[4, 2, 1]] * 2


def test_out_of_memory_at_one_image_is_an_error_naming_the_sizes(tiny_model: Path) -> None:
    engine = _engine(tiny_model, batch_size=2)
    engine.module = Tight(engine.module, most=0)
    with pytest.raises(EvaluationError, match=r"even one image at a time \(tried batch sizes"):
        evaluate_clean(engine)
    with pytest.raises(EvaluationError, match="out of device memory"):
        evaluate_clean(engine)  # the failure is cached like any other


OOM_FACTORY = """
import torch
from torch import nn


class Tight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.conv(x)


def build():
    return Tight()
"""


def test_the_record_says_which_evaluations_ran_with_smaller_batches(
    run_audit, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(tight_factory=OOM_FACTORY)
    monkeypatch.syspath_prepend(str(pytester.path))
    weights = pytester.path / "weights.pth"
    conv = nn.Conv2d(3, 8, 3, padding=1).state_dict()
    torch.save({f"conv.{k}": v for k, v in conv.items()}, weights)
    suite = 'name = "s"\n[[claims]]\nid = "c"\nkind = "clean"\nmetric = "miou"\nmin = 0.0\n'
    pytester.makefile(".toml", s=suite)
    result = run_audit(
        "--audit", str(weights), "--audit-factory", "tight_factory:build", "--audit-suite",
        "s.toml", "--audit-data", DATA, "--audit-batch-size", "8",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert record["provenance"]["memory_retries"] == [
        {"evaluation": "clean", "batch_sizes": [8, 4, 2]}
    ]
    assert record["provenance"]["batch_size"] == 8
    page = (pytester.path / "audit-report" / "index.html").read_text()
    assert "clean ran out of device memory and was retried with smaller batches" in page


class AutocastSpy(nn.Module):
    """Records, per forward pass, whether autocast was on and the batch's dtype."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_autocast_enabled("cpu"), x.requires_grad))
        return self.inner(x)


def test_attacks_run_in_the_precision_asked_for_and_certificates_never(
    tiny_model: Path,
) -> None:
    engine = _engine(tiny_model, batch_size=8, precision="bfloat16")
    spy = engine.module = AutocastSpy(engine.module)
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    attacked = evaluate_attack(engine, "pgd", {"steps": 2}, threat)
    # the attack's own passes (with gradients) under autocast; the clean and adversarial
    # measurements in full precision
    assert {autocast for autocast, grad in spy.calls if grad} == {True}
    assert {autocast for autocast, grad in spy.calls if not grad} == {False}
    assert torch.isfinite(attacked.l2).all() and attacked.per_image.dtype == torch.int64
    # reduced precision is another computation: its own cache key
    full = _engine(tiny_model, batch_size=8)
    assert engine.attack_parts() == {"precision": "bfloat16"} and full.attack_parts() == {}
    spy.calls.clear()
    certify_lipschitz(engine, 10.0, [0.05])
    assert spy.calls and not any(autocast for autocast, _ in spy.calls)


def test_images_loaded_by_worker_processes_give_the_same_results(tiny_model: Path) -> None:
    inline = evaluate_clean(_engine(tiny_model, batch_size=2))
    loaded = evaluate_clean(_engine(tiny_model, batch_size=2, loader_workers=2))
    assert torch.equal(inline.per_image, loaded.per_image)
    assert inline.sample_names == loaded.sample_names

"""Invariance claims: perturbations drawn inside a norm ball by Hypothesis must not change
certified pixels (or, without a certifier, more than a share of all pixels)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.errors import ConfigError
from audit.strategies import Perturbation
from audit.suite import parse_suite
from tests.conftest import TINY_DATA, ColourNet, report_files

INVARIANCE = """
name = "inv"
[[claims]]
id = "certified-invariance"
statement = "No perturbation of L2 norm {eps} changes a pixel certified beyond it"
kind = "invariance"
norm = "l2"
eps = {eps}
lipschitz = "{lipschitz}"
max_examples = {examples}
"""


def test_the_keys_parse_and_mistakes_name_the_key() -> None:
    raw = tomllib.loads(INVARIANCE.format(eps=0.1, lipschitz="auto", examples=10))
    (spec,) = parse_suite(raw, path=Path("s.toml")).claims
    assert spec.params["shapes"] == ["dense", "sparse", "patch", "lowfreq"]
    assert spec.threshold.max == 0.0 and spec.params["metric"] == "violations"
    raw["claims"][0].update(certifier="none")
    del raw["claims"][0]["lipschitz"]
    with pytest.raises(ConfigError, match="share of pixels") as info:
        parse_suite(raw, path=Path("s.toml"))
    assert info.value.key == "min"
    raw["claims"][0].update(min=0.99, shapes=["dense", "blob"])
    with pytest.raises(ConfigError) as info:
        parse_suite(raw, path=Path("s.toml"))
    assert info.value.key == "shapes"


@pytest.mark.parametrize("shape", ["dense", "sparse", "patch", "lowfreq"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_every_shape_lies_on_the_sphere_of_its_norm(shape: str, norm: str) -> None:
    from audit.strategies import Box

    images = torch.full((2, 3, 16, 24), 0.5)
    p = Perturbation(shape, norm, 0.1, seed=3, density=0.2, box=Box(0.1, 0.2, 0.3, 0.4), grid=3)
    delta = p.delta(images).flatten(1)
    measured = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    assert torch.allclose(measured, torch.full((2,), 0.1), atol=1e-6)
    assert torch.equal(p.delta(images), p.delta(images))  # a function of its parameters


def test_the_demo_model_keeps_certified_pixels_at_half_their_radius(
    pytester: pytest.Pytester, run_audit
) -> None:
    # The demo's median certified radius on these images is about 0.1: half of it.
    pytester.makefile(".toml", inv=INVARIANCE.format(eps=0.05, lipschitz="auto", examples=8))
    result = run_audit("--audit=demo", "--audit-suite", "inv.toml", "--audit-data", TINY_DATA)
    result.assert_outcomes(passed=1)
    record, _ = report_files(pytester.path / "audit-report")
    (claim,) = record["claims"]
    assert claim["measured"] == 0 and claim["evidence"]["certified_pixels"] > 0
    assert claim["evidence"]["proof"] == "proven"
    assert claim["evidence"]["search"]["examples"] >= 8


def test_a_model_claiming_too_small_a_constant_fails_with_a_shrunk_counterexample(
    pytester: pytest.Pytester, run_audit, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "liar.pt"
    traced = torch.jit.trace(ColourNet().eval(), torch.rand(1, 3, 32, 64))
    meta = {"num_classes": 8, "lipschitz": 0.01, "lipschitz_source": "a card that lies"}
    torch.jit.save(traced, str(path), _extra_files={"audit.json": json.dumps(meta)})
    pytester.makefile(".toml", inv=INVARIANCE.format(eps=0.5, lipschitz="claimed", examples=10))
    result = run_audit(f"--audit={path}", "--audit-suite", "inv.toml", "--audit-data", TINY_DATA)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*claim 'certified-invariance' violated*shrunk counterexample*"])
    record, html = report_files(pytester.path / "audit-report")
    (claim,) = record["claims"]
    assert claim["measured"] > 0 and claim["unproven"]
    shrunk = claim["evidence"]["counterexample"]
    assert shrunk["params"]["norm"] == "l2" and shrunk["params"]["eps"] == 0.5
    files = claim["evidence"]["files"]
    arrays = {k: np.load(pytester.path / "audit-report" / v) for k, v in files.items()}
    assert arrays["input"].shape == (3, 32, 64) and arrays["changed"].any()
    assert np.linalg.norm(arrays["perturbation"]) <= 0.5 + 1e-5
    assert "shrunk counterexample" in html

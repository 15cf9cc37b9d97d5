"""Corruption claims: the issue's forms, the deterministic sweep, and the Hypothesis search
(planted weakness found at its threshold, a failure replayed first on the next run)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.corruptions import corrupt
from audit.data import open_dataset
from audit.errors import ConfigError
from audit.suite import parse_suite
from tests.conftest import TINY_DATA, report_files

FOG = """
[[claims]]
id = "fog-3"
statement = "mIoU under fog at severity 3 stays at or above 0.5"
kind = "corruption"
corruption = "fog"
severity = 3                 # or a list: one item per severity
metric = "miou"
min = 0.5
"""
BRIGHT = """
[[claims]]
id = "bright-search"
statement = "Under any brightness increase up to severity 5, mIoU stays at or above 0.3"
kind = "corruption_search"
corruptions = ["brightness"] # one or several; the search also picks which
severity = [0, 5]            # a continuous range, same scale as imagecorruptions' 1-5
metric = "miou"
min = 0.3
max_examples = 30
"""
#: the planted weakness: the model collapses on an image once brightness passes severity 2.5
PLANTED_SEVERITY = 2.5


def parse(text: str):
    return parse_suite(tomllib.loads(text), path=Path("suite.toml"))


def test_the_issue_forms_parse_as_written() -> None:
    (fog,) = parse(FOG).claims
    assert fog.params["corruption"] == "fog" and fog.params["severity"] == 3.0
    (search,) = parse(BRIGHT).claims
    assert search.params["corruptions"] == ["brightness"]
    assert search.params["severity"] == [0.0, 5.0] and search.params["max_examples"] == 30


def test_a_severity_list_expands_into_one_item_each() -> None:
    suite = parse(FOG.replace("severity = 3 ", "severity = [1, 2.5, 5] "))
    assert [s.id for s in suite.claims] == ["fog-3[s1]", "fog-3[s2.5]", "fog-3[s5]"]
    assert [s.params["severity"] for s in suite.claims] == [1.0, 2.5, 5.0]


@pytest.mark.parametrize(
    ("change", "key", "match"),
    [
        (('corruption = "fog"', 'corruption = "smog"'), "corruption", "unknown corruption"),
        (("severity = 3 ", "severity = 6 "), "severity", "outside"),
        (("severity = 3 ", "severity = [] "), "severity", "empty list"),
        (('metric = "miou"', 'metric = "iou"'), "metric", "unknown metric"),
    ],
)
def test_bad_corruption_claims_name_the_key(change, key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse(FOG.replace(*change))
    assert info.value.key == key


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("severity = [0, 5] ", "severity = [4, 1] "), "severity"),
        (("max_examples = 30", "max_examples = 100000"), "max_examples"),
        (('corruptions = ["brightness"]', "corruptions = []"), "corruptions"),
        (("max_examples = 30", "max_examples = 3\nregion = { height = [0, 2] }"), "region"),
    ],
)
def test_bad_search_claims_name_the_key(change, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(BRIGHT.replace(*change))
    assert info.value.key == key


# -- a model with a planted weakness --------------------------------------------------------
class Collapse(nn.Module):
    """Predicts class 0 everywhere, so no corruption changes its metric, until an image's
    mean brightness passes ``threshold``: then class 7 everywhere on that image."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        base = torch.full((1, 8, 1, 1), -1.0)
        base[0, 0] = 1.0
        collapsed = torch.full((1, 8, 1, 1), -1.0)
        collapsed[0, 7] = 1.0
        self.register_buffer("base", base)
        self.register_buffer("collapsed", collapsed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = (x.mean(dim=(1, 2, 3), keepdim=True) > self.threshold).float()
        return (self.base * (1 - c) + self.collapsed * c) * torch.ones_like(x[:, :1])


def tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset(TINY_DATA)
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples])


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The collapsing model as TorchScript, and its clean pixel accuracy (class 0's share)."""
    images, masks = tiny_images()
    brightened = corrupt("brightness", images, PLANTED_SEVERITY, seeds=[0] * len(images))
    # The brightest image at the planted severity sits exactly on the threshold: any higher
    # severity collapses it, and no lower one collapses any image.
    threshold = float(brightened.mean(dim=(1, 2, 3)).max())
    path = tmp_path_factory.mktemp("planted") / "collapse.pt"
    traced = torch.jit.trace(Collapse(threshold).eval(), images[:1])
    torch.jit.save(traced, str(path), _extra_files={"audit.json": json.dumps({"num_classes": 8})})
    labelled = masks != 255
    accuracy = float(((masks == 0) & labelled).sum() / labelled.sum())
    return path, accuracy


def search_suite(high: float, accuracy: float, max_examples: int = 30) -> str:
    return f"""
name = "planted"
[[claims]]
id = "bright"
kind = "corruption_search"
corruptions = ["brightness"]
severity = [0, {high}]
metric = "pixel_accuracy"
min = {accuracy - 0.01}
max_examples = {max_examples}
"""


def test_a_planted_weakness_is_found_and_shrunk_to_its_threshold(
    pytester: pytest.Pytester, run_audit, planted
) -> None:
    model, accuracy = planted
    pytester.makefile(".toml", planted=search_suite(5, accuracy))
    result = run_audit(
        f"--audit={model}", "--audit-suite", "planted.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*claim 'bright' violated: worst pixel accuracy found by a search*"]
    )
    record, html = report_files(pytester.path / "audit-report")
    (claim,) = record["claims"]
    search = claim["evidence"]["search"]
    shrunk = search["shrunk"]
    assert shrunk["params"]["corruption"] == "brightness"
    assert shrunk["params"]["severity"] > PLANTED_SEVERITY
    # bisected down to the planted threshold, within the bisection's resolution
    assert shrunk["boundary"]["severity"] == pytest.approx(PLANTED_SEVERITY, abs=0.02)
    assert shrunk["worst_images"] and shrunk["worst_images"][0] in claim["message"]
    assert f"violates from severity {shrunk['boundary']['severity']:.3f}" in claim["message"]
    assert "shrunk counterexample: brightness at severity" in html


def test_the_same_model_passes_a_range_that_stops_short_of_its_threshold(
    pytester: pytest.Pytester, run_audit, planted
) -> None:
    model, accuracy = planted
    pytester.makefile(".toml", planted=search_suite(PLANTED_SEVERITY - 0.1, accuracy))
    result = run_audit(
        f"--audit={model}", "--audit-suite", "planted.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1)
    record, _ = report_files(pytester.path / "audit-report")
    search = record["claims"][0]["evidence"]["search"]
    assert search["shrunk"] is None and search["examples"] >= 10


def test_a_failing_search_run_twice_replays_the_stored_failure_first(
    pytester: pytest.Pytester, run_audit, planted
) -> None:
    model, accuracy = planted
    pytester.makefile(".toml", planted=search_suite(5, accuracy))
    args = (f"--audit={model}", "--audit-suite", "planted.toml", "--audit-data", TINY_DATA)
    run_audit(*args).assert_outcomes(failed=1)
    assert any((pytester.path / ".segaudit" / "hypothesis").iterdir())
    first = report_files(pytester.path / "audit-report")[0]["claims"][0]["evidence"]["search"]
    run_audit(*args).assert_outcomes(failed=1)
    second = report_files(pytester.path / "audit-report")[0]["claims"][0]["evidence"]["search"]
    # the stored (shrunk) failure is the first example the second run evaluates, so it
    # needs no generation phase and fewer examples
    assert second["first_example"]["params"] == first["shrunk"]["params"]
    assert second["examples"] < first["examples"]
    assert second["shrunk"]["params"] == first["shrunk"]["params"]
    # without a database nothing is replayed: the run starts afresh
    run_audit(*args, "--audit-hypothesis-db", "none").assert_outcomes(failed=1)
    third = report_files(pytester.path / "audit-report")[0]["claims"][0]["evidence"]["search"]
    assert third["database"] is None
    assert third["first_example"]["params"] != first["shrunk"]["params"]


def test_a_corruption_sweep_is_computed_once_per_severity_and_summarised(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(
        ".toml",
        sweep="""
name = "sweep"
[[claims]]
id = "noise"
kind = "corruption"
corruption = "gaussian_noise"
severity = [1, 3]
metric = "miou"
min = 0.0
[[claims]]
id = "noise-ratio"
kind = "corruption"
corruption = "gaussian_noise"
severity = 3
metric = "iou_ratio"
min = 0.0
""",
    )
    run_audit(
        f"--audit={tiny_model}", "--audit-suite", "sweep.toml", "--audit-data", TINY_DATA
    ).assert_outcomes(passed=3)
    record, html = report_files(pytester.path / "audit-report")
    entries = record["evaluations"]["corruptions"]
    assert [(e["corruption"], e["severity"]) for e in entries] == [
        ("gaussian_noise", 1.0),
        ("gaussian_noise", 3.0),
    ]
    (row,) = record["evaluations"]["corruption_summary"]
    assert row["severities_in_mean"] == 2
    assert row["mean_miou"] == pytest.approx(
        (entries[0]["metrics"]["miou"] + entries[1]["metrics"]["miou"]) / 2
    )
    ratio = next(c for c in record["claims"] if c["id"] == "noise-ratio")
    assert ratio["measured"] == pytest.approx(entries[1]["iou_ratio"], rel=1e-6)
    assert 'id="corruptions"' in html and "gaussian_noise" in html

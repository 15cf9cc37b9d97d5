"""Baselines: a run compared with an earlier one, claim by claim and evaluation by evaluation.

Unit tests build records by hand (each status, tolerance, direction, intervals, changed
inputs, bad files); the end-to-end tests audit a model fitted in a fraction of a second and a
worse copy of it (weights shrunk, so the bias drowns the colours) against the first run's
``results.json``; ``python -m audit compare`` is run on records of both kinds.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from audit.__main__ import main as compare_main
from audit.claims import ClaimSpec, Measurement, Threshold, judge
from audit.claims.base import judge_regression
from audit.config import Settings, resolve_settings
from audit.data.synthetic import SyntheticStreetScenes
from audit.errors import ConfigError
from audit.record.baseline import (
    Baseline,
    compare_claim,
    compare_records,
    input_changes,
    load_baseline,
)
from audit.record.baseline_table import comparison_table, summary_lines
from audit.session import run_audit as audit_api
from audit.suite import parse_suite
from conftest import TINY_DATA, ColourNet, report_files, save_torchscript

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

REPO = Path(__file__).resolve().parent.parent


def claim(
    value: float | None,
    nodeid: str = "gate::c",
    *,
    threshold: dict[str, float | None] | None = None,
    interval: tuple[float, float] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A claim entry as the record holds it (only the fields a comparison reads)."""
    return {
        "nodeid": nodeid,
        "kind": "clean",
        "metric": "miou",
        "params": {"metric": "miou"},
        "statistic": "estimate",
        "threshold": threshold or {"min": 0.5, "max": None},
        "tolerance": None,
        "measured": value,
        "compared": value,
        "interval": {"low": interval[0], "high": interval[1]} if interval else None,
        "verdict": "passed" if value is not None else "error",
        **fields,
    }


def record(*claims: dict[str, Any], **parts: Any) -> dict[str, Any]:
    return {"schema_version": 1, "complete": True, "claims": list(claims), **parts}


def baseline_of(rec: dict[str, Any]) -> Baseline:
    claims = {c["nodeid"]: c for c in rec["claims"]}
    return Baseline(Path("base/results.json"), "0" * 64, rec, claims)


# -- one claim against its baseline -------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "old", "new", "status"),
    [
        ({"min": 0.5}, 0.60, 0.55, "regressed"),  # under a min, higher is better
        ({"min": 0.5}, 0.60, 0.65, "improved"),
        ({"max": 0.2}, 0.10, 0.15, "regressed"),  # under a max, lower is better
        ({"max": 0.2}, 0.10, 0.05, "improved"),
        ({"min": 0.2, "max": 0.8}, 0.50, 0.70, "regressed"),  # nearer a bound of the band
        ({"min": 0.2, "max": 0.8}, 0.75, 0.50, "improved"),
    ],
)
def test_the_direction_comes_from_the_threshold(
    threshold: dict[str, float], old: float, new: float, status: str
) -> None:
    row = compare_claim(claim(old, threshold=threshold), claim(new, threshold=threshold))
    assert row["status"] == status
    assert row["delta"] == pytest.approx(new - old)
    assert (row["loss"] > 0) == (status == "regressed")


def test_the_default_tolerance_is_half_a_percent_point() -> None:
    # 0.600 - 0.595 is 0.005 up to float rounding: still within
    at_edge = compare_claim(claim(0.600), claim(0.595))
    assert [at_edge[k] for k in ("status", "within", "tolerance")] == [
        "unchanged", "tolerance", 0.005
    ]  # fmt: skip
    assert compare_claim(claim(0.600), claim(0.594))["status"] == "regressed"
    assert compare_claim(claim(0.600), claim(0.594), tolerance=0.01)["status"] == "unchanged"


def test_a_claims_own_tolerance_wins() -> None:
    row = compare_claim(claim(0.60, tolerance=0.02), claim(0.59, tolerance=0.02), tolerance=0.0)
    assert (row["status"], row["tolerance"]) == ("unchanged", 0.02)
    # this run's suite says what the claim tolerates; the baseline's key only fills a gap
    row = compare_claim(claim(0.60, tolerance=0.5), claim(0.59, tolerance=0.001))
    assert (row["status"], row["tolerance"]) == ("regressed", 0.001)
    assert compare_claim(claim(0.60, tolerance=0.02), claim(0.59))["tolerance"] == 0.02


def test_a_change_inside_the_baselines_interval_is_unchanged() -> None:
    inside = compare_claim(claim(0.60, interval=(0.50, 0.70)), claim(0.52))
    assert (inside["status"], inside["within"]) == ("unchanged", "interval")
    outside = compare_claim(claim(0.60, interval=(0.55, 0.65)), claim(0.52))
    assert outside["status"] == "regressed"
    # only the new run has an interval: the baseline's value inside it
    only_new = compare_claim(claim(0.60), claim(0.52, interval=(0.45, 0.61)))
    assert (only_new["status"], only_new["within"]) == ("unchanged", "interval")
    # a claim judged on an interval bound moves with the width itself: no interval slack
    lower = {"statistic": "ci_lower"}
    on_bound = compare_claim(claim(0.60, interval=(0.5, 0.7), **lower), claim(0.52, **lower))
    assert on_bound["status"] == "regressed"


def test_new_removed_and_unmeasured_claims() -> None:
    assert compare_claim(None, claim(0.6))["status"] == "new"
    assert compare_claim(claim(0.6), None)["status"] == "removed"
    errored = compare_claim(claim(0.6), claim(None))
    verdicts = (errored["old_verdict"], errored["new_verdict"])
    assert (errored["status"], verdicts) == ("unmeasured", ("passed", "error"))
    assert errored["delta"] is None


def test_a_claim_whose_terms_changed_says_which() -> None:
    old = claim(0.6, params={"attack": "pgd", "steps": 10})
    new = claim(0.6, params={"attack": "pgd", "steps": 20}, threshold={"min": 0.55})
    assert compare_claim(old, new)["changed_terms"] == ["threshold", "params.steps"]
    assert compare_claim(old, old)["changed_terms"] == []


def test_the_value_compared_is_the_one_the_threshold_judged() -> None:
    old = claim(0.60, statistic="ci_lower", measured=0.70)
    new = claim(0.50, statistic="ci_lower", measured=0.70)
    row = compare_claim(old, new)
    assert (row["old"], row["new"], row["status"]) == (0.60, 0.50, "regressed")


def test_the_regression_sentence_names_both_values() -> None:
    spec = ClaimSpec(
        suite="gate",
        id="pgd-miou",
        statement="mIoU under PGD stays at or above 0.3",
        kind="attack",
        params={},
        threshold=Threshold(min=0.3),
        statistic="estimate",
        source="gate.toml",
    )
    m = Measurement(
        value=0.41, quantity="mIoU", condition="under pgd linf eps=4/255", num_samples=4
    )
    verdict = judge(spec, m)
    assert verdict.passed
    row = compare_claim(claim(0.55, threshold={"min": 0.3}), claim(0.41, threshold={"min": 0.3}))
    failed = judge_regression(spec, m, verdict, row)
    assert not failed.passed
    assert failed.summary == (
        "claim 'pgd-miou' regressed: mIoU under pgd linf eps=4/255 is 0.410, the baseline run "
        "had 0.550: regressed by 0.140 (tolerance 0.005); its threshold (>= 0.3) holds"
    )
    # a loss just over the tolerance is printed with the digits that show it is over
    row = compare_claim(claim(0.5, threshold={"min": 0.3}), claim(0.4949, threshold={"min": 0.3}))
    assert (
        "regressed by 0.0051 (tolerance 0.005)" in judge_regression(spec, m, verdict, row).summary
    )


# -- inputs and evaluations ---------------------------------------------------------------


def provenance(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seed": 0,
        "model": {"sha256": "a" * 64},
        "dataset": {"fingerprint": "d" * 64, "num_samples": 4},
        "versions": {"torch": "2.14.1", "segaudit": "0.1.0"},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            base[section] = {**base[section], field: value}
        else:
            base[section] = value
    return base


def test_changed_inputs_are_flagged() -> None:
    suites = [{"name": "gate", "sha256": "1" * 64}]
    same = record(provenance=provenance(), suites=suites)
    assert input_changes(same, same) == []
    comparison = compare_records(baseline_of(same), same)
    assert (comparison["different_model"], comparison["different_data"]) == (False, False)

    other = record(
        provenance=provenance(
            model__sha256="b" * 64,
            dataset__fingerprint="e" * 64,
            seed=1,
            versions={"torch": "2.15.0", "segaudit": "0.1.0"},
        ),
        suites=[{"name": "gate", "sha256": "2" * 64}, {"name": "extra", "sha256": "3" * 64}],
    )
    changes = {c["input"]: (c["old"], c["new"]) for c in input_changes(same, other)}
    assert changes == {
        "model": ("a" * 64, "b" * 64),
        "data": ("d" * 64, "e" * 64),
        "seed": (0, 1),
        "suite gate": ("1" * 64, "2" * 64),
        "suite extra": (None, "3" * 64),
        "torch": ("2.14.1", "2.15.0"),
    }
    comparison = compare_records(baseline_of(same), other)
    assert (comparison["different_model"], comparison["different_data"]) == (True, True)
    fewer = record(provenance=provenance(dataset__num_samples=2), suites=suites)
    assert compare_records(baseline_of(same), fewer)["different_data"] is True
    # a model that never loaded in this run has no sha256: unknown, not a change
    unloaded = record(provenance={**provenance(), "model": {}}, suites=suites)
    assert input_changes(same, unloaded) == []


def test_evaluations_are_compared_by_id_and_metric() -> None:
    def evaluations(miou: float, success: float, attack_id: str = "pgd-linf-4-255-abc") -> dict:
        return {
            "clean": {
                "metrics": {"miou": 0.7},
                "intervals": {"miou": {"low": 0.6, "high": 0.8}},
            },
            "attacks": [
                {
                    "id": attack_id,
                    "metrics": {"miou": miou, "pixel_accuracy": 0.9},
                    "success_rate": success,
                }
            ],
            "soundness": [{"claim": "gate::sound", "violations": 0}],
        }

    old = record(evaluations=evaluations(0.5, 0.10))
    new = record(evaluations={**evaluations(0.4, 0.05), "clean": {"metrics": {"miou": 0.65}}})
    rows = {
        (r["evaluation"], r["metric"]): r
        for r in compare_records(baseline_of(old), new)["evaluations"]
    }
    assert rows["clean", "miou"]["status"] == "unchanged"  # inside the baseline's interval
    assert rows["pgd-linf-4-255-abc", "miou"]["status"] == "regressed"
    assert rows["pgd-linf-4-255-abc", "success_rate"]["status"] == "improved"  # lower is better
    assert rows["pgd-linf-4-255-abc", "pixel_accuracy"]["status"] == "unchanged"
    assert rows["soundness gate::sound", "violations"]["status"] == "unchanged"
    renamed = record(evaluations=evaluations(0.5, 0.1, attack_id="pgd-linf-4-255-def"))
    statuses = {
        (r["evaluation"], r["status"])
        for r in compare_records(baseline_of(old), renamed)["evaluations"]
    }
    assert {("pgd-linf-4-255-def", "new"), ("pgd-linf-4-255-abc", "removed")} <= statuses


def test_counts_and_order_of_the_comparison() -> None:
    old = record(claim(0.6, "gate::a"), claim(0.6, "gate::gone"), claim(0.6, "gate::b"))
    new = record(claim(0.5, "gate::a"), claim(0.7, "gate::b"), claim(0.6, "gate::fresh"))
    comparison = compare_records(baseline_of(old), new)
    assert [(c["nodeid"], c["status"]) for c in comparison["claims"]] == [
        ("gate::a", "regressed"),
        ("gate::b", "improved"),
        ("gate::fresh", "new"),
        ("gate::gone", "removed"),
    ]
    counts = {"regressed": 1, "improved": 1, "unchanged": 0, "new": 1, "removed": 1}
    assert comparison["counts"] == {**counts, "unmeasured": 0}
    assert (comparison["path"], comparison["sha256"]) == ("base/results.json", "0" * 64)


# -- baseline files -----------------------------------------------------------------------


@pytest.mark.hand_made_records("a fragment with only what a comparison reads")
@pytest.mark.hand_made_records("a hand-made baseline")
def test_a_baseline_is_a_results_file_or_its_folder(tmp_path: Path) -> None:
    text = json.dumps(record(claim(0.6)))
    (tmp_path / "results.json").write_text(text)
    for given in (tmp_path, tmp_path / "results.json", str(tmp_path)):
        loaded = load_baseline(given)
        assert loaded.path == (tmp_path / "results.json").resolve()
        assert loaded.sha256 == hashlib.sha256(text.encode()).hexdigest()
        assert set(loaded.claims) == {"gate::c"}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.json", None, r"baseline .*missing\.json: does not exist"),
        ("folder", None, r"baseline .*folder/results\.json: the report folder holds no results"),
        ("broken.json", "{not json", r"baseline .*broken\.json: not valid JSON \(.*line 1\)"),
        ("list.json", "[1, 2]", r"list\.json: not an audit record \(no 'claims' list\)"),
        (
            "future.json",
            '{"schema_version": 2, "claims": []}',
            r"future\.json: schema_version 2, but this SegAudit reads records of schema_version 1",
        ),
        ("nameless.json", '{"schema_version": 1, "claims": [{}]}', r"without a 'nodeid'"),
    ],
)
def test_a_bad_baseline_file_is_named_in_the_error(
    tmp_path: Path, name: str, content: str | None, match: str
) -> None:
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_baseline(path)


# -- settings and claim keys --------------------------------------------------------------


def test_baseline_settings_resolve_like_the_other_paths(tmp_path: Path) -> None:
    (tmp_path / "audit.toml").write_text('baseline = "ci/base"\nfail_on_regression = true\n')
    s = resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path / "sub")
    assert (s.baseline, s.fail_on_regression) == ((tmp_path / "ci" / "base").resolve(), True)
    s = resolve_settings(
        rootdir=tmp_path, cli={"baseline": "here.json"}, invocation_dir=tmp_path / "sub"
    )
    assert s.baseline == (tmp_path / "sub" / "here.json").resolve()
    assert Settings().baseline is None and Settings().fail_on_regression is False


def test_fail_on_regression_without_a_baseline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "audit.toml").write_text("fail_on_regression = true\n")
    with pytest.raises(ConfigError, match=r"key 'fail_on_regression': .*no baseline is given"):
        resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path)
    (tmp_path / "audit.toml").write_text('fail_on_regression = "yes"\n')
    with pytest.raises(ConfigError, match=r"key 'fail_on_regression': expected true or false"):
        resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path)


SUITE = """
name = "gate"
[[claims]]
id = "pgd-miou"
kind = "attack"
attack = "pgd"
norm = "linf"
eps = "2/255"
steps = 3
metric = "miou"
min = 0.0

[[claims]]
id = "clean-miou"
kind = "clean"
metric = "miou"
min = 0.0
tolerance = 0.5
"""


def test_the_tolerance_key_is_parsed_and_checked(tmp_path: Path) -> None:
    suite = parse_suite(tomllib.loads(SUITE), path=tmp_path / "gate.toml")
    assert [c.tolerance for c in suite.claims] == [None, 0.5]
    bad = SUITE.replace("tolerance = 0.5", "tolerance = -0.1")
    with pytest.raises(
        ConfigError, match=r"claim 'clean-miou', key 'tolerance': expected a number >= 0"
    ):
        parse_suite(tomllib.loads(bad), path=tmp_path / "gate.toml")


# -- end to end ---------------------------------------------------------------------------


def _fitted_colour_net() -> ColourNet:
    """A per-pixel linear model on 3x3 patches fitted by least squares: in a fraction of a
    second it is good enough (clean mIoU about 0.2 on TINY_DATA) for a worse copy to regress
    well outside the bootstrap interval."""
    data = SyntheticStreetScenes(8, seed=1, size=(32, 64))
    images = torch.stack([data[i].image for i in range(len(data))])
    labels = torch.stack([data[i].mask for i in range(len(data))]).long().reshape(-1)
    patches = torch.nn.functional.unfold(images, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    keep = labels != data.ignore_index
    design = torch.cat([patches, torch.ones(len(patches), 1)], 1)[keep]
    targets = torch.nn.functional.one_hot(labels[keep], 8).float()
    solution = torch.linalg.lstsq(design, targets).solution
    net = ColourNet()
    with torch.no_grad():
        net.conv.weight.copy_(solution[:27].T.reshape(8, 3, 3, 3))
        net.conv.bias.copy_(solution[27])
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fitted model, a worse copy (weights x 0.3, so the bias drowns the colours), the
    suite, and the fitted model's audit as the baseline (``base``, a report folder)."""
    folder = tmp_path_factory.mktemp("baseline")
    good = _fitted_colour_net()
    worse = ColourNet()
    worse.load_state_dict(good.state_dict())
    with torch.no_grad():
        worse.conv.weight.mul_(0.3)
    suite = folder / "gate.toml"
    suite.write_text(SUITE)
    paths = {
        "good": save_torchscript(good, folder / "good.pt", {"num_classes": 8}),
        "worse": save_torchscript(worse, folder / "worse.pt", {"num_classes": 8}),
        "suite": suite,
        "base": folder / "base",
    }
    audit_api(
        Settings(
            model=str(paths["good"]),
            data=TINY_DATA,
            suites=(str(suite),),
            report_dir=paths["base"],
        )
    )
    return paths


def _audit_against_base(run_audit, models: dict[str, Path], model: str, *extra: str):
    return run_audit(
        f"--audit={models[model]}",
        "--audit-data",
        TINY_DATA,
        "--audit-suite",
        str(models["suite"]),
        "--audit-only",
        "--audit-report",
        "new",
        "--audit-baseline",
        str(models["base"]),
        *extra,
    )


def test_a_planted_regression_fails_the_claim(
    pytester: pytest.Pytester, run_audit, models: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    result = _audit_against_base(run_audit, models, "worse", "--audit-fail-on-regression")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "claim 'pgd-miou' regressed: mIoU under pgd linf eps=2/255,* is 0.0*, the baseline "
            "run had 0.2*: regressed by 0.1* (tolerance 0.005); its threshold (>= 0) holds",
            "claims against the baseline: 1 regressed, 1 unchanged (tolerance 0.005); baseline *",
            "  inputs changed: model",
            "  regressed: gate::pgd-miou 0.2* -> 0.0* (-0.1*)",
        ]
    )
    rec, _ = report_files(pytester.path / "new")
    claims = {c["id"]: c for c in rec["claims"]}
    assert claims["pgd-miou"]["verdict"] == "failed"
    assert claims["pgd-miou"]["baseline"]["status"] == "regressed"
    assert claims["pgd-miou"]["message"].startswith("claim 'pgd-miou' regressed:")
    # its own tolerance (0.5) keeps the clean claim's drop from counting
    clean = claims["clean-miou"]
    assert (clean["verdict"], clean["baseline"]["status"]) == ("passed", "unchanged")
    block = rec["baseline"]
    base_file = models["base"] / "results.json"
    assert block["path"] == str(base_file.resolve())
    assert block["sha256"] == hashlib.sha256(base_file.read_bytes()).hexdigest()
    assert block["different_model"] and not block["different_data"]
    assert [c["input"] for c in block["input_changes"]] == ["model"]
    assert block["counts"]["regressed"] == 1
    attack_rows = [e for e in block["evaluations"] if e["evaluation"].startswith("pgd-")]
    assert {e["metric"]: e["status"] for e in attack_rows}["miou"] == "regressed"

    # the same two records through `python -m audit compare`
    capsys.readouterr()
    assert compare_main(["compare", str(models["base"]), str(pytester.path / "new")]) == 0
    out = capsys.readouterr().out
    assert "gate::pgd-miou" in out and "regressed" in out
    assert "model: " in out
    args = ["compare", str(models["base"]), str(pytester.path / "new"), "--fail-on-regression"]
    assert compare_main(args) == 1


def test_without_fail_on_regression_a_regression_is_reported_not_failed(
    pytester: pytest.Pytester, run_audit, models: dict[str, Path]
) -> None:
    result = _audit_against_base(run_audit, models, "worse")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["claims against the baseline: 1 regressed, 1 unchanged*"])


def test_the_same_model_shows_no_regression(
    pytester: pytest.Pytester, run_audit, models: dict[str, Path]
) -> None:
    result = _audit_against_base(run_audit, models, "good", "--audit-fail-on-regression")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["claims against the baseline: 0 regressed, 2 unchanged*"])
    rec, _ = report_files(pytester.path / "new")
    block = rec["baseline"]
    assert block["input_changes"] == []  # same model, data, seed, suite text and versions
    assert {c["status"] for c in block["claims"]} == {"unchanged"}
    # bit-identical on CPU; a GPU's nondeterministic kernels may move a pixel or two
    assert all(abs(c["delta"]) < 1e-3 for c in block["claims"])
    assert {e["status"] for e in block["evaluations"]} == {"unchanged"}


def test_a_bad_baseline_is_a_usage_error_before_any_work(
    pytester: pytest.Pytester, run_audit, models: dict[str, Path]
) -> None:
    (pytester.path / "broken.json").write_text("{")
    for baseline, message in (
        ("missing.json", "*SegAudit: baseline */missing.json: does not exist*"),
        ("broken.json", "*SegAudit: baseline */broken.json: not valid JSON*"),
    ):
        result = run_audit(f"--audit={models['good']}", "--audit-baseline", baseline)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
    result = run_audit(f"--audit={models['good']}", "--audit-fail-on-regression")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*fail_on_regression is on but no baseline is given*"])
    assert not (pytester.path / "audit-report" / "results.json").exists()


def test_compare_command_line(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(
        json.dumps(record(claim(0.6, "gate::a"), claim(0.6, "gate::b")))
    )
    (tmp_path / "new.json").write_text(
        json.dumps(record(claim(0.5, "gate::a"), claim(0.6, "gate::b")))
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "audit", "compare", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )

    done = run("old.json", "new.json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["claim", "old", "new", "delta", "status"]
    assert lines[1].split() == ["gate::a", "0.6000", "0.5000", "-0.1000", "regressed"]
    assert lines[2].split() == ["gate::b", "0.6000", "0.6000", "+0.0000", "unchanged"]
    assert "claims against the baseline: 1 regressed, 1 unchanged (tolerance 0.005)" in lines
    assert run("old.json", "new.json", "--fail-on-regression").returncode == 1
    loose = run("old.json", "new.json", "--fail-on-regression", "--tolerance", "0.2")
    assert loose.returncode == 0 and "0 regressed, 2 unchanged (tolerance 0.2)" in loose.stdout
    missing = run("old.json", "nothing.json")
    assert missing.returncode == 4
    assert "record " in missing.stderr and "nothing.json: does not exist" in missing.stderr
    assert run("old.json", "new.json", "--tolerance", "-1").returncode == 4
    assert run("old.json").returncode == 4


def test_the_readme_section_uses_real_options() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Baselines and CI", 1)[1].split("\n### ", 1)[0]
    plugin = (REPO / "audit" / "plugin.py").read_text(encoding="utf-8")
    cli = (REPO / "audit" / "__main__.py").read_text(encoding="utf-8")
    options = set(re.findall(r"(--[a-z][a-z-]*)", section))
    assert {"--audit-baseline", "--audit-fail-on-regression", "--tolerance"} <= options
    unknown = [o for o in options if f'"{o}"' not in plugin and f'"{o}"' not in cli]
    assert not unknown, f"README's Baselines and CI section names unknown options: {unknown}"
    for key in ("baseline", "fail_on_regression"):
        assert f"`{key}`" in readme and f'"{key}": "{key}"' in (
            REPO / "audit" / "config.py"
        ).read_text(encoding="utf-8")


def test_the_text_says_what_changed_and_when_the_baseline_is_partial() -> None:
    old = {**record(claim(0.6), provenance=provenance()), "complete": False}
    new = record(claim(0.5), provenance=provenance(model__sha256="b" * 64))
    comparison = compare_records(baseline_of(old), new)
    lines = summary_lines(comparison)
    assert lines[0] == (
        "claims against the baseline: 1 regressed (tolerance 0.005); baseline base/results.json"
    )
    assert lines[1:] == [
        "  the baseline run did not finish: claims it did not reach are unmeasured",
        "  inputs changed: model",
        "  regressed: gate::c 0.6000 -> 0.5000 (-0.1000)",
    ]
    table = comparison_table(comparison)
    assert f"  model: {'a' * 12} -> {'b' * 12} (a different model file)" in table

"""Bounded work: cost ceilings at collection, per-claim time budgets, threat-model bounds.

Each test builds the bad input itself: a claim table with a huge count, a radius larger than
the images, a claim that cannot finish in its budget.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch

from audit.budget import Budget, claim_budget
from audit.claims import get_kind, known_kinds
from audit.config import Settings, settings_from_mapping
from audit.data.synthetic import SyntheticStreetScenes
from audit.engine import Engine
from audit.errors import ClaimTimeout, ConfigError, ThreatOutOfRange
from audit.evaluations import evaluate_attack
from audit.limits import CEILINGS, PARAM_CEILINGS
from audit.model import load_model
from audit.suite import load_suite, parse_suite
from audit.threat import ThreatModel, image_diameter, parse_epsilon, radius_beyond_image
from tests.conftest import TINY_DATA, ColourNet, save_torchscript

PGD = (
    'id = "pgd"\nkind = "attack"\nattack = "pgd"\nnorm = "linf"\neps = "4/255"\n'
    'metric = "miou"\nmin = 0\n'
)
MIN_NORM = 'id = "mn"\nkind = "min_norm"\nattack = "advlib:dag"\nnorm = "l2"\nmin = 0\n'
SMOOTH = (
    'id = "rs"\nkind = "certified"\ncertifier = "smoothing"\nnorm = "l2"\neps = 0.1\n'
    'metric = "certified_pixel_accuracy"\nmin = 0\n'
)
SOUND = 'id = "snd"\nkind = "certificate_soundness"\nnorm = "l2"\neps = 0.1\n'
BIG = 1_000_000_000


def parse(table: str):
    return parse_suite(tomllib.loads(f"[[claims]]\n{table}"), path=Path("suite.toml"))


# -- A. ceilings ---------------------------------------------------------------------------
HUGE = [
    (PGD + f"steps = {BIG}\n", "steps", "attack iterations"),
    (PGD + "steps = 1e9\n", "steps", "attack iterations"),
    (PGD + f"restarts = {BIG}\n", "restarts", "attack restarts"),
    (
        PGD.replace('"pgd"\nnorm', '"advlib:pdpgd"\nnorm') + f"params = {{ num_steps = {BIG} }}\n",
        "params.num_steps",
        "attack iterations",
    ),
    (
        PGD.replace('"pgd"\nnorm', '"torchattacks:EOTPGD"\nnorm')
        + "params = { eot_iter = 5000 }\n",
        "params.eot_iter",
        "gradient samples per attack step",
    ),
    (PGD.replace('"4/255"', json.dumps([f"{i}/255" for i in range(1, 66)])), "eps", "epsilons"),
    (MIN_NORM + f"steps = {BIG}\n", "steps", "attack iterations"),
    (MIN_NORM + f"params = {{ max_iter = {BIG} }}\n", "params.max_iter", "attack iterations"),
    (MIN_NORM + f"radius_steps = {BIG}\n", "radius_steps", "points on each path"),
    (SMOOTH + f"n = {BIG}\n", "n", "noisy samples per image"),
    (SMOOTH + f"n0 = {BIG}\n", "n0", "selection samples per image"),
    (SOUND + f"steps = {BIG}\n", "steps", "attack iterations"),
    (SOUND + f"min_norm_steps = {BIG}\n", "min_norm_steps", "minimal-norm attack iterations"),
    (SOUND + f"search_examples = {BIG}\n", "search_examples", "search directions"),
    (SOUND + f"attacks = {json.dumps(['pgd'] * 17)}\n", "attacks", "attacks in one claim"),
]


@pytest.mark.parametrize(("table", "key", "counts"), HUGE)
def test_a_cost_above_its_ceiling_is_refused_naming_value_ceiling_and_the_way_out(
    table: str, key: str, counts: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(table)
    message = str(info.value)
    assert info.value.key == key and info.value.source == "suite.toml"
    assert info.value.claim in ("pgd", "mn", "rs", "snd")
    ceiling = CEILINGS[PARAM_CEILINGS.get(key.removeprefix("params."), key)]
    assert f"ceiling of {ceiling.limit:,} {counts}" in message
    assert "allow_large = true" in message
    if str(BIG) in table:
        assert str(BIG) in message  # the value as written


@pytest.mark.parametrize(("table", "key", "counts"), HUGE)
def test_allow_large_lets_the_claim_through(table: str, key: str, counts: str) -> None:
    if "1e9" in table:  # a float is still no whole number of steps
        with pytest.raises(ConfigError, match="whole number"):
            parse(table + "allow_large = true\n")
        return
    assert parse(table + "allow_large = true\n").claims


def test_values_at_the_ceiling_pass_and_allow_large_must_be_a_boolean() -> None:
    assert parse(PGD + f"steps = {CEILINGS['steps'].limit}\n").claims
    with pytest.raises(ConfigError, match="true or false") as info:
        parse(PGD + 'allow_large = "yes"\n')
    assert info.value.key == "allow_large"


def test_every_kind_accepts_the_limit_keys_and_every_count_key_has_a_ceiling() -> None:
    from audit.attacks import COMMON_PARAMS
    from audit.claims.base import COMMON_KEYS

    assert {"allow_large", "timeout"} <= set(COMMON_KEYS)
    # the keys of the built-in kinds that count work, each bounded by the one table
    counted = {
        "attack": {"steps", "restarts", "eps"},
        "min_norm": {"steps", "radius_steps"},
        "certified": {"n", "n0", "eps"},
        "certificate_soundness": {"steps", "min_norm_steps", "search_examples", "attacks", "eps"},
    }
    for kind, keys in counted.items():
        assert keys <= set(get_kind(kind).keys), kind
        assert keys <= set(CEILINGS), kind
    assert {"steps", "restarts"} <= set(COMMON_PARAMS) & set(CEILINGS)
    assert set(PARAM_CEILINGS.values()) <= set(CEILINGS)
    assert "lipschitz" in known_kinds()  # no cost key: its searches have fixed sizes


def test_the_documented_ceilings_are_the_enforced_ones() -> None:
    import re

    docs = (Path(__file__).parents[1] / "docs" / "claims.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d,]+) \|", docs, flags=re.MULTILINE))
    assert {k: int(v.replace(",", "")) for k, v in rows.items()} == {
        k: c.limit for k, c in CEILINGS.items()
    }
    for key in PARAM_CEILINGS:
        assert f"`{key}`" in docs


def test_builtin_suites_stay_within_every_ceiling() -> None:
    for name in ("smoke", "arnab2018", "massena2025"):
        assert load_suite(name).claims


# -- C. threat-model bounds ----------------------------------------------------------------
@pytest.mark.parametrize("eps", ["5", "1.5", "300/255", '["4/255", 5]'])
def test_linf_epsilon_above_one_is_refused_with_the_reason(eps: str) -> None:
    value = eps if eps.startswith("[") else f'"{eps}"'
    with pytest.raises(ConfigError, match=r"pixel values lie in \[0, 1\]") as info:
        parse(PGD.replace('"4/255"', value))
    assert info.value.key == "eps"
    if eps == "5":
        assert "did you mean '5/255'" in str(info.value)


def test_linf_epsilon_of_one_and_large_l2_radii_parse() -> None:
    assert parse(PGD.replace('"4/255"', "1")).claims
    # an L2 radius is bounded by the image size, which only the data knows
    assert parse(PGD.replace('"linf"', '"l2"').replace('"4/255"', "50")).claims


def test_image_diameter_and_the_radius_message() -> None:
    assert image_diameter((32, 64)) == pytest.approx(math.sqrt(3 * 32 * 64))
    fits = ThreatModel("l2", parse_epsilon(78))
    assert radius_beyond_image(fits, (32, 64)) is None
    assert radius_beyond_image(ThreatModel("linf", parse_epsilon(1)), (1, 1)) is None
    message = radius_beyond_image(ThreatModel("l2", parse_epsilon(79)), (32, 64))
    assert message is not None
    assert "L2 radius 79" in message and "32x64" in message and "78.38" in message


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    torch.manual_seed(0)
    path = save_torchscript(ColourNet(), tmp_path_factory.mktemp("m") / "m.pt")
    data = SyntheticStreetScenes(num_samples=4, size=(32, 64))
    return Engine(load_model(path), data, batch_size=2, bootstrap_resamples=20)


def l2(eps: float) -> ThreatModel:
    return ThreatModel("l2", parse_epsilon(eps))


def test_an_l2_radius_beyond_the_images_is_a_run_time_error_naming_it(engine: Engine) -> None:
    with pytest.raises(ThreatOutOfRange, match=r"L2 radius 1000 .* 32x64 .* = 78\.38"):
        evaluate_attack(engine, "pgd", {"steps": 1}, l2(1000))
    with pytest.raises(ThreatOutOfRange, match=r"78\.38"):
        engine.check_radius(l2(1000))  # before any pass: the first sample's size


def test_a_sweep_sibling_beyond_the_images_does_not_poison_the_others(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.attacks.native import RandomNoise

    # noise made grid-sharing, so one computation serves the sweep (as adv-lib's L2 does)
    monkeypatch.setattr(RandomNoise, "shares_grid", True)
    sweep = [l2(0.5), l2(1000)]
    assert evaluate_attack(engine, "noise", {}, sweep[0], sweep=sweep).num_samples == 4
    with pytest.raises(ThreatOutOfRange):
        evaluate_attack(engine, "noise", {}, sweep[1], sweep=sweep)


# -- B. time budgets -----------------------------------------------------------------------
def test_a_spent_budget_stops_the_attack_with_its_progress_and_is_not_cached(
    engine: Engine,
) -> None:
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    params = {"steps": 5}
    with engine.deadline(1e-9, "test"), pytest.raises(ClaimTimeout) as info:
        evaluate_attack(engine, "pgd", params, threat)
    progress = info.value.progress
    assert progress["evaluation"] == "attack" and progress["params"]["attack"] == "pgd"
    assert progress["images_total"] == 4 and progress["budget_s"] == 1e-9
    assert "budget 1e-09 s (test)" in str(info.value)
    json.dumps(progress)  # goes into results.json as it is
    # without a budget the same evaluation computes, rather than re-raising the timeout
    assert evaluate_attack(engine, "pgd", params, threat).num_samples == 4
    assert engine.budget is None


def test_progress_counts_steps_images_and_completed_evaluations(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    attack_step = engine.attack_step

    def step(done: int, total: int) -> None:
        if done == 3:
            engine.budget.deadline = 0  # the budget is spent from the third step on
        attack_step(done, total)

    monkeypatch.setattr(engine, "attack_step", step)
    with engine.deadline(60, "test"), pytest.raises(ClaimTimeout) as info:
        engine.cached(engine.key_parts("warm-up"), lambda: 1)
        evaluate_attack(engine, "segpgd", {"steps": 7}, threat)
    progress = info.value.progress
    assert (progress["step"], progress["steps"]) == (3, 7)
    assert progress["images_done"] == 0 and progress["completed"] == ["warm-up"]
    assert progress["forward_passes"] >= 3


def test_the_claims_timeout_wins_over_the_setting() -> None:
    spec = parse(PGD + "timeout = 2.5\n").claims[0]
    assert spec.timeout == 2.5
    assert claim_budget(spec, Settings(claim_timeout=9.0)) == (2.5, "timeout = 2.5 in the claim")
    plain = parse(PGD).claims[0]
    assert plain.timeout is None
    assert claim_budget(plain, Settings(claim_timeout=9.0))[0] == 9.0
    assert claim_budget(plain, Settings()) == (None, "")
    # every item of a sweep keeps it
    sweep = parse(PGD.replace('"4/255"', '["1/255", "2/255"]') + "timeout = 3\n").claims
    assert [s.timeout for s in sweep] == [3.0, 3.0]


@pytest.mark.parametrize("value", ["0", "-1", '"10"', "true", "inf"])
def test_a_bad_timeout_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="seconds > 0") as info:
        parse(PGD + f"timeout = {value}\n")
    assert info.value.key == "timeout"


def test_claim_timeout_setting_is_a_positive_number() -> None:
    assert settings_from_mapping({"claim_timeout": 30}, source="f") == {"claim_timeout": 30.0}
    for bad in (0, -2, "30", True):
        with pytest.raises(ConfigError, match="key 'claim_timeout'"):
            settings_from_mapping({"claim_timeout": bad}, source="f")


def test_budget_check_passes_until_the_deadline() -> None:
    budget = Budget(60, "test")
    budget.check()
    budget.deadline = 0
    with pytest.raises(ClaimTimeout, match="0 forward passes"):
        budget.check()


def test_the_lipschitz_search_calls_its_tick_at_every_step() -> None:
    from audit.certify.falsify import lipschitz_lower_bound

    calls = []

    def tick() -> None:
        calls.append(1)
        if len(calls) == 4:
            raise ClaimTimeout("stop", budget_s=0, elapsed_s=0, progress={})

    model = torch.nn.Conv2d(3, 2, 1).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 8, 8)
    lipschitz_lower_bound(model, images, generator=generator, power_steps=2, ascent_steps=1)
    with pytest.raises(ClaimTimeout):
        lipschitz_lower_bound(
            model, images, generator=generator, power_steps=2, ascent_steps=5, tick=tick
        )
    assert len(calls) == 4  # 2 power steps, then ascent steps until it raised


# -- end to end through pytest -------------------------------------------------------------
def test_a_huge_steps_is_a_collection_error_naming_the_ceiling(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate="[[claims]]\n" + PGD + f"steps = {BIG}\n")
    result = run_audit("--audit", str(tiny_model), "--audit-suite", "gate.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            f"*gate.toml, claim 'pgd', key 'steps': {BIG} is above the ceiling of 10,000 attack "
            "iterations*allow_large = true*"
        ]
    )
    assert "Traceback" not in result.stdout.str()
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert "ceiling" in record["errors"][0]["message"]
    assert "ceiling of 10,000" in (pytester.path / "audit-report" / "index.html").read_text()


def test_an_linf_eps_above_the_pixel_range_is_a_collection_error(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate="[[claims]]\n" + PGD.replace('"4/255"', "5"))
    result = run_audit("--audit", str(tiny_model), "--audit-suite", "gate.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*gate.toml, claim 'pgd', key 'eps': *"])
    report = pytester.path / "audit-report"
    record = json.loads((report / "results.json").read_text())
    assert "key 'eps'" in record["errors"][0]["message"]
    assert (report / "index.html").is_file()


def test_an_l2_radius_beyond_the_image_diameter_is_a_claim_error(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    # 32x64 images: the diameter of [0, 1]^(3*32*64) is sqrt(6144), about 78.38
    too_far = PGD.replace('norm = "linf"', 'norm = "l2"').replace('"4/255"', "100")
    pytester.makefile(".toml", gate=f"[[claims]]\n{too_far}[[claims]]\n{FAST}")
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1, failed=1)
    report = pytester.path / "audit-report"
    record = json.loads((report / "results.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    message = claims["pgd"]["message"]
    assert claims["pgd"]["verdict"] == "error"
    assert "L2 radius 100 exceeds the diameter of 32x64 images" in message and "78.38" in message
    assert (report / "index.html").is_file()


def test_the_claim_timeout_option_bounds_every_claim(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    bounded = SLOW.replace('"slow"', '"bounded"').replace("timeout = 0.01\n", "")
    pytester.makefile(".toml", gate=f"[[claims]]\n{bounded}")
    result = run_audit(
        "--audit",
        str(tiny_model),
        "--audit-suite",
        "gate.toml",
        "--audit-data",
        TINY_DATA,
        "--audit-claim-timeout",
        "0.01",
    )
    result.assert_outcomes(failed=1)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert "the claim_timeout setting (0.01 s)" in record["claims"][0]["message"]
    assert record["claims"][0]["evidence"]["partial"]["budget_s"] == 0.01


SLOW = PGD.replace('id = "pgd"', 'id = "slow"') + "steps = 5000\ntimeout = 0.01\n"
FAST = 'id = "fast"\nkind = "clean"\nmetric = "pixel_accuracy"\nmin = 0\n'


def test_a_claim_past_its_timeout_is_an_error_with_its_partial_progress_recorded(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=f"[[claims]]\n{SLOW}[[claims]]\n{FAST}")
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*gate::slow - claim ran out of time: budget 0.01 s*"])
    report = pytester.path / "audit-report"
    record = json.loads((report / "results.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    slow = claims["slow"]
    assert slow["verdict"] == "error" and record["status"] == "error"
    assert "timeout = 0.01 in the claim" in slow["message"]
    partial = slow["evidence"]["partial"]
    assert partial["evaluation"] == "attack" and partial["images_total"] == 4
    assert partial["budget_s"] == 0.01 and partial["elapsed_s"] >= 0.01
    assert claims["fast"]["verdict"] == "passed"
    assert "ran out of time" in (report / "index.html").read_text()


def test_the_claim_timeout_setting_applies_where_a_claim_gives_none(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    generous = SLOW.replace('"slow"', '"generous"').replace("timeout = 0.01", "timeout = 600")
    generous = generous.replace("steps = 5000", "steps = 2")
    bounded = SLOW.replace('"slow"', '"bounded"').replace("timeout = 0.01\n", "")
    pytester.makefile(".toml", gate=f"[[claims]]\n{bounded}[[claims]]\n{generous}")
    pytester.makefile(".toml", audit="claim_timeout = 0.01\n")
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1, failed=1)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    assert "the claim_timeout setting (0.01 s)" in claims["bounded"]["message"]
    assert claims["generous"]["verdict"] == "passed"

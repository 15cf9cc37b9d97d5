"""Attack claims end to end: parsing, sweeps, the engine's shared work, evidence and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.attacks import ATTACKS, LIBRARIES, build_attack
from audit.config import Settings
from audit.data.synthetic import SyntheticStreetScenes
from audit.engine import Engine
from audit.errors import ConfigError
from audit.evaluations import evaluate_attack, evaluate_noise
from audit.model import load_model
from audit.model.fingerprint import fingerprint_module
from audit.session import AuditSession
from audit.suite import parse_suite
from audit.threat import ThreatModel, parse_epsilon
from tests.conftest import TINY_DATA, ColourNet, save_torchscript

ARNAB_GRID = ["0.25/255", "0.5/255", "1/255", "2/255", "4/255", "8/255", "16/255", "32/255"]


def claims(*tables: str) -> dict:
    import tomllib

    return tomllib.loads("\n".join(f"[[claims]]\n{t}" for t in tables))


def parse(*tables: str):
    return parse_suite(claims(*tables), path=Path("suite.toml"))


PGD = 'id = "pgd-miou"\nkind = "attack"\nattack = "pgd"\nnorm = "linf"\neps = "4/255"\n'


# -- parsing -------------------------------------------------------------------------------
def test_the_issue_form_parses_as_written() -> None:
    suite = parse(PGD + 'statement = "s"\nsteps = 20\nmetric = "miou"\nmin = 0.5')
    (spec,) = suite.claims
    assert spec.id == "pgd-miou"
    assert spec.params["attack"] == "pgd"
    assert spec.params["eps"] == "4/255"
    assert spec.params["attack_params"] == {"steps": 20}


def test_an_eps_list_expands_into_one_item_per_epsilon_with_readable_ids() -> None:
    grid = json.dumps(ARNAB_GRID)
    suite = parse(
        f'id = "ifgsm"\nkind = "attack"\nattack = "ifgsm"\nnorm = "linf"\neps = {grid}\n'
        'metric = "iou_ratio"\nmin = 0.5'
    )
    ids = [s.id for s in suite.claims]
    assert ids == [f"ifgsm[linf-{e}]" for e in ARNAB_GRID]
    assert suite.claims[4].nodeid == "suite::ifgsm[linf-4/255]"
    assert all(s.params["_sweep"] == ARNAB_GRID for s in suite.claims)


@pytest.mark.parametrize(
    ("table", "key", "match"),
    [
        (
            'id = "a"\nkind = "attack"\nattack = "pgd"\neps = "4/255"\nmetric = "miou"\nmin = 0.5',
            "norm",
            "without its norm",
        ),
        (
            'id = "a"\nkind = "attack"\nattack = "pgd"\nnorm = "linf"\nmetric = "miou"\nmin = 0.5',
            "eps",
            "missing",
        ),
        (PGD.replace('"pgd"', '"pgdd"') + 'metric = "miou"\nmin = 0.5', "attack", "unknown attack"),
        (PGD.replace('"pgd"', '"nolib:X"') + 'metric = "miou"\nmin = 0.5', "attack", "unknown"),
        (PGD + 'metric = "iou"\nmin = 0.5', "metric", "unknown metric 'iou'"),
        (PGD + 'metric = "miou"\nmin = 0.5\nsteps = 0', "steps", "whole number >= 1"),
        (
            PGD.replace('"pgd"', '"fgsm"') + 'metric = "miou"\nmin = 0.5\nsteps = 3',
            "steps",
            "does not take 'steps'",
        ),
        (
            PGD.replace('"linf"', '"l2"').replace('"pgd"', '"ifgsm"')
            + 'metric = "miou"\nmin = 0.5',
            "norm",
            "defined for linf, not l2",
        ),
        (
            PGD.replace('"4/255"', '["1/255", "1/255"]') + 'metric = "miou"\nmin = 0.5',
            "eps",
            "appears twice",
        ),
        (PGD.replace('"4/255"', "[]") + 'metric = "miou"\nmin = 0.5', "eps", "empty list"),
        (PGD.replace('"4/255"', '"-1"') + 'metric = "miou"\nmin = 0.5', "eps", ">= 0"),
        (PGD + 'metric = "miou"\nmin = 0.5\nparams = 3', "params", "table"),
    ],
)
def test_bad_attack_claims_name_file_claim_and_key(table: str, key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse(table)
    assert info.value.key == key
    assert "suite.toml" in str(info.value)


# -- the engine: shared work ---------------------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    model = load_model(
        save_torchscript(ColourNet(), Path(__import__("tempfile").mkdtemp()) / "m.pt")
    )
    data = SyntheticStreetScenes(num_samples=4, size=(32, 64))
    return Engine(model, data, batch_size=2, bootstrap_resamples=50)


def linf(text: str) -> ThreatModel:
    return ThreatModel("linf", parse_epsilon(text))


def test_one_gradient_serves_the_whole_single_step_grid(engine: Engine) -> None:
    grid = [linf(e) for e in ARNAB_GRID]
    first = evaluate_attack(engine, "fgsm", {}, grid[3], sweep=grid)
    assert first.backward_passes == 2  # one per batch, for all eight epsilons
    assert first.shared_by == 8
    passes = engine.forward_passes
    later = [evaluate_attack(engine, "fgsm", {}, t, sweep=grid) for t in grid]
    assert engine.forward_passes == passes  # every epsilon was already there
    assert later[3] is first
    mious = [engine.score(e.per_image, "miou")[0] for e in later]
    assert mious[0] > mious[-1]
    for threat, evaluation in zip(grid, later, strict=True):
        assert float(evaluation.linf.max()) <= threat.eps.value + 1e-6


def test_claims_on_the_same_attack_run_it_once_whatever_their_spelling(engine: Engine) -> None:
    threat = linf("2/255")
    before = engine.forward_passes
    a = evaluate_attack(engine, "pgd", {"steps": 3}, threat)
    after_first = engine.forward_passes
    # two batches: per batch 1 clean forward, 3 attack steps, 1 adversarial forward
    assert after_first - before == 2 * (1 + 3 + 1)
    assert a.backward_passes == 2 * 3
    b = evaluate_attack(engine, "pgd", {"steps": 3, "restarts": 1, "random_start": True}, threat)
    assert b is a
    assert engine.forward_passes == after_first


def test_attacks_are_deterministic_for_a_seed_and_differ_across_seeds(engine: Engine) -> None:
    def run(seed: int) -> torch.Tensor:
        fresh = Engine(engine.model, engine.dataset, batch_size=2, seed=seed)
        return evaluate_attack(fresh, "pgd", {"steps": 2}, linf("8/255")).per_image

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_noise_baseline_spends_the_budget(engine: Engine) -> None:
    noise = evaluate_noise(engine, linf("4/255"))
    assert torch.allclose(noise.linf, torch.full_like(noise.linf, 4 / 255), atol=1e-6)
    l2 = evaluate_noise(engine, ThreatModel("l2", parse_epsilon(0.5)))
    # clipping into [0, 1] at saturated pixels can only shorten it
    assert bool((l2.l2 <= 0.5 + 1e-5).all()) and bool((l2.l2 >= 0.45).all())


def test_worst_examples_are_the_lowest_accuracy_images(engine: Engine) -> None:
    evaluation = evaluate_attack(engine, "pgd", {"steps": 2}, linf("16/255"))
    cms = evaluation.per_image
    accuracy = cms.diagonal(dim1=1, dim2=2).sum(1) / cms.flatten(1).sum(1)
    kept = [e.pixel_accuracy_adv for e in evaluation.examples]
    assert kept == sorted(kept)
    assert kept[0] == pytest.approx(float(accuracy.min()))
    assert len(kept) == engine.attack_examples


# -- whole sessions ------------------------------------------------------------------------
class BNNet(nn.Module):
    """Conv + BatchNorm (eval mode) whose parameters require grad: a library that calls
    train() or backward() on it would change running stats or leave .grad behind."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


def every_registered_attack() -> list[tuple[str, str, str]]:
    """(attack, norm, extra claim keys) for every native attack and every attack each
    registered library adapter supports, in every norm: nothing here is a hand-kept list,
    so a newly registered attack is checked as soon as it exists."""
    rows = []
    for name, cls in ATTACKS.items():
        cheap = "steps = 2\n" if "steps" in cls.defaults else ""
        if "iterations" in cls.defaults:  # an ensemble's budget knob (sea)
            cheap = "params = {iterations = 2}\n"
        rows += [(name, norm, cheap) for norm in cls.norms]
    for prefix, library in LIBRARIES.items():
        for attack, norms in library.supported().items():
            name = f"{prefix}:{attack}"
            try:
                build_attack(name, {"steps": 2})
                cheap = "steps = 2\n"
            except TypeError:  # a single-step attack takes no steps
                cheap = ""
            rows += [(name, norm, cheap) for norm in norms]
    return rows


def _suite_text(attacks: list[tuple[str, str, str]]) -> str:
    tables = []
    for i, (attack, norm, extra) in enumerate(attacks):
        eps = '"8/255"' if norm == "linf" else "0.5"
        tables.append(
            f'[[claims]]\nid = "a{i}"\nkind = "attack"\nattack = "{attack}"\nnorm = "{norm}"\n'
            f'eps = {eps}\nmetric = "miou"\nmin = 0.0\n{extra}\n'
        )
    return 'name = "every"\n' + "\n".join(tables)


@pytest.mark.slow
def test_every_registered_attack_leaves_the_model_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")  # adv-lib compiles alma_prox: 40 s cold
    torch.manual_seed(0)
    model_path = save_torchscript(BNNet(), tmp_path / "bn.pt")
    suite = tmp_path / "every.toml"
    attacks = every_registered_attack()
    assert len(attacks) > 30  # native, torchattacks, foolbox and adv-lib all enumerated
    suite.write_text(_suite_text(attacks))
    settings = Settings(
        model=str(model_path),
        data=TINY_DATA,
        suites=(str(suite),),
        report_dir=tmp_path / "report",
        device="cpu",
        limit=2,
        bootstrap_resamples=0,
    )
    session = AuditSession(settings)
    specs = session.load_suite(str(suite)).claims
    module = session.engine.module
    for p in module.parameters():
        p.requires_grad_(True)
    before = fingerprint_module(module, include_grads=True)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    for spec in specs:
        session.check(spec)
        assert fingerprint_module(module, include_grads=True) == before, spec.params["attack"]
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    session.finish(complete=True)
    record = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {c["verdict"] for c in record["claims"]} == {"passed"}
    evaluated = {e["attack"] for e in record["evaluations"]["attacks"]}
    assert evaluated == {a for a, _, _ in attacks}  # noise included


SWEEP_SUITE = """
name = "sweep"

[[claims]]
id = "clean"
kind = "clean"
metric = "miou"
min = 0.0

[[claims]]
id = "fgsm"
statement = "IoU ratio under FGSM stays above 0.9"
kind = "attack"
attack = "fgsm"
norm = "linf"
eps = ["1/255", "64/255"]
metric = "iou_ratio"
min = 0.9

[[claims]]
id = "pgd-asr"
statement = "PGD flips at most 99.9% of the correct pixels"
kind = "attack"
attack = "pgd"
norm = "linf"
eps = "8/255"
steps = 3
metric = "attack_success_rate"
max = 0.999
"""


def test_sweep_items_pass_and_fail_with_sentences_and_evidence(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", sweep=SWEEP_SUITE)
    result = run_audit(
        "--audit",
        str(tiny_model),
        "--audit-suite",
        "sweep.toml",
        "--audit-data",
        TINY_DATA,
        "-rA",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "claim 'fgsm[[]linf-64/255[]]' violated: IoU ratio under fgsm linf eps=64/255 "
            "at 32x64 is 0.*, claim requires >= 0.9 (4 images, 95% CI *",
            "PASSED sweep::fgsm[[]linf-1/255[]]",
            "FAILED sweep::fgsm[[]linf-64/255[]] - claim*",
        ]
    )
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    claims_by_id = {c["id"]: c for c in record["claims"]}
    failed = claims_by_id["fgsm[linf-64/255]"]
    assert failed["verdict"] == "failed"
    assert failed["evidence"]["threat"] == {"norm": "linf", "eps": 64 / 255, "eps_text": "64/255"}
    assert failed["evidence"]["resolution"] == [32, 64]
    assert "_sweep" not in failed["params"]
    entries = {e["id"]: e for e in record["evaluations"]["attacks"]}
    entry = entries[failed["evidence"]["evaluation"]]
    assert entry["iou_ratio"] == pytest.approx(failed["measured"])
    assert entry["iou_ratio"] == pytest.approx(entry["metrics"]["miou"] / entry["clean_miou"])
    assert entry["noise"]["miou"] is not None
    for example in entry["examples"]:
        for key in ("image", "adversarial", "perturbation", "prediction_adv"):
            assert (pytester.path / "audit-report" / example[key]).is_file()
    asr = claims_by_id["pgd-asr"]
    assert asr["measured"] == pytest.approx(entries[asr["evidence"]["evaluation"]]["success_rate"])
    assert isinstance(record["diagnostics"], list)
    for finding in record["diagnostics"]:  # also printed, after the report's path
        result.stdout.fnmatch_lines([f"  {finding['check']}: *"])
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "IoU ratio" in html and "<svg" in html
    assert "No diagnostics were recorded" not in html  # the record names the checks it made


def test_thresholds_are_overridden_from_the_command_line(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", sweep=SWEEP_SUITE)
    result = run_audit(
        "--audit",
        str(tiny_model),
        "--audit-suite",
        "sweep.toml",
        "--audit-data",
        TINY_DATA,
        "--audit-threshold",
        "fgsm=0.0",
        "--audit-threshold",
        "sweep::clean=max:0.0",
        "-rA",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["claim 'clean' violated: *claim requires <= 0 *", "PASSED sweep::fgsm[[]linf-64/255[]]"]
    )


def test_a_missing_library_fails_its_claim_only(
    pytester: pytest.Pytester, run_audit, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "audit.attacks.adapters.foolbox", None)
    pytester.makefile(
        ".toml",
        lib="""
[[claims]]
id = "fb"
kind = "attack"
attack = "foolbox:LinfPGD"
norm = "linf"
eps = "2/255"
metric = "miou"
min = 0.0

[[claims]]
id = "native"
kind = "attack"
attack = "fgsm"
norm = "linf"
eps = "2/255"
metric = "miou"
min = 0.0
""",
    )
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "lib.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*needs the foolbox library*pytest-segaudit[[]attacks[]]*"])


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.conv.weight.data.add_(1e-3),
        lambda m: setattr(m.conv.weight, "data", m.conv.weight.data.clone()),
        lambda m: m.bn.train()(torch.rand(2, 16, 4, 4)),  # running stats, no version bump
        lambda m: m.bn.running_var.mul_(2),
        lambda m: m.head.weight.requires_grad_(False),
        lambda m: m.train(),
        lambda m: m.head(torch.rand(1, 16, 2, 2)).sum().backward(),  # leaves .grad behind
    ],
)
def test_the_model_guard_catches_every_kind_of_tampering(tamper) -> None:
    from audit.errors import EvaluationError
    from audit.evaluations.guard import ModelGuard

    module = BNNet().eval()
    guard = ModelGuard(module)
    assert guard.changes() == []
    tamper(module)
    with pytest.raises(EvaluationError, match="changed the audited model"):
        guard.check("evil")


def test_guard_digests_do_not_depend_on_chunking_and_see_one_ulp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import audit.evaluations.guard as adversarial

    tensors = [torch.rand(5), torch.rand(3, 3).half(), torch.arange(7), torch.empty(0)]
    tensors.append(torch.rand(100))
    whole = adversarial._digests(tensors)
    monkeypatch.setattr(adversarial, "_DIGEST_CHUNK", 8)
    assert adversarial._digests(tensors) == whole
    tensors[4][50] = torch.nextafter(tensors[4][50], torch.tensor(2.0))
    after = adversarial._digests(tensors)
    assert after[4] != whole[4] and after[:4] == whole[:4]


def test_nan_logits_under_attack_name_the_samples_and_the_report_is_written(
    pytester: pytest.Pytester, run_audit, tmp_path: Path
) -> None:
    from tests.conftest import NaNNet

    model = save_torchscript(NaNNet(), tmp_path / "nan.pt")
    pytester.makefile(
        ".toml",
        nan='[[claims]]\nid = "pgd"\nkind = "attack"\nattack = "pgd"\nnorm = "linf"\n'
        'eps = "2/255"\nsteps = 2\nmetric = "miou"\nmin = 0.0\n',
    )
    result = run_audit(
        "--audit", str(model), "--audit-suite", "nan.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NaN or Inf logits for * sample(s): 'synthetic-000*"])
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert record["claims"][0]["verdict"] == "error"
    assert (pytester.path / "audit-report" / "index.html").is_file()


MIN_NORM_SUITE = """
name = "radii"

[[claims]]
id = "pixel-radius"
statement = "The 0.9-quantile of per-pixel L2 radii found by PDGD is non-negative"
kind = "min_norm"
attack = "advlib:pdgd"
norm = "l2"
steps = 20
quantile = 0.9
min = 0.0

[[claims]]
id = "image-radius"
statement = "The median per-image L2 radius is at most 1e-6 (it is not)"
kind = "min_norm"
attack = "advlib:pdgd"
norm = "l2"
steps = 20
radius = "image"
max = 0.000001
"""


def test_min_norm_claims_share_one_run_and_report_radii(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", radii=MIN_NORM_SUITE)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "radii.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*claim 'image-radius' violated: median per-image l2 radius found by advlib:pdgd is *"]
    )
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    (entry,) = record["evaluations"]["min_norm"]  # both claims, one attack run
    claims_by_id = {c["id"]: c for c in record["claims"]}
    assert claims_by_id["pixel-radius"]["measured"] == pytest.approx(
        entry["pixel_radius"]["quantiles"]["0.9"]
    )
    assert entry["pixel_radius"]["count"] > 0
    assert 0 < entry["pixel_radius"]["finite_fraction"] <= 1


def test_min_norm_refuses_budgeted_attacks_and_needs_a_norm() -> None:
    with pytest.raises(ConfigError, match="not a minimal-norm attack") as info:
        parse('id = "m"\nkind = "min_norm"\nattack = "pgd"\nnorm = "l2"\nmin = 0.1')
    assert info.value.key == "attack"
    with pytest.raises(ConfigError, match="needs its norm"):
        parse('id = "m"\nkind = "min_norm"\nattack = "advlib:dag"\nmin = 0.1')
    with pytest.raises(ConfigError, match="'pixel' or 'image'"):
        parse(
            'id = "m"\nkind = "min_norm"\nattack = "advlib:dag"\nnorm = "l2"\nradius = "x"\nmin = 1'
        )

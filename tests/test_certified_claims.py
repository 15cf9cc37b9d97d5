"""Certificate claims end to end: parsing, the demo model, and a model that lies about L."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from audit.errors import ConfigError
from audit.suite import parse_suite
from conftest import TINY_DATA, save_torchscript


def parse(table: str):
    return parse_suite(tomllib.loads(f"[[claims]]\n{table}"), path=Path("suite.toml"))


CERT = 'id = "c"\nkind = "certified"\nnorm = "l2"\neps = 0.1\nmetric = "certified_pixel_accuracy"\n'


def test_the_issue_forms_parse_as_written() -> None:
    suite = parse_suite(
        tomllib.loads(
            """
[[claims]]
id = "certified-pa"
statement = "Certified pixel accuracy at L2 radius 0.1 is at least 0.5"
kind = "certified"
certifier = "lipschitz"
norm = "l2"
eps = 0.1
metric = "certified_pixel_accuracy"
min = 0.5

[[claims]]
id = "no-attack-beats-certificate"
statement = "No attack flips a pixel certified at L2 radius 0.1"
kind = "certificate_soundness"
certifier = "lipschitz"
norm = "l2"
eps = 0.1
attacks = ["pgd", "cospgd", "advlib:pdpgd"]
"""
        ),
        path=Path("s.toml"),
    )
    cert, sound = suite.claims
    assert cert.params["certifier"] == "lipschitz" and cert.params["lipschitz"] == "auto"
    assert sound.threshold.max == 0.0 and sound.threshold.min is None
    assert sound.params["attacks"] == ["pgd", "cospgd", "advlib:pdpgd"]


def test_radius_lists_expand_and_smoothing_keys_parse() -> None:
    suite = parse(
        CERT.replace("eps = 0.1", "eps = [0.1, 0.17]")
        + 'certifier = "smoothing"\nsigma = 0.25\nn = 50\nmin = 0.1'
    )
    assert [s.id for s in suite.claims] == ["c[l2-0.1]", "c[l2-0.17]"]
    assert suite.claims[0].params["smoothing"]["n"] == 50
    assert suite.claims[0].params["smoothing"]["correction"] == "holm"


@pytest.mark.parametrize(
    ("table", "key", "match"),
    [
        (CERT.replace('norm = "l2"\n', "") + "min = 0.5", "norm", "without its norm"),
        (CERT.replace('"l2"', '"linf"') + "min = 0.5", "norm", "certificates are L2"),
        (CERT + 'certifier = "magic"\nmin = 0.5', "certifier", "'lipschitz' or 'smoothing'"),
        (CERT + "sigma = 0.5\nmin = 0.5", "sigma", "only the smoothing certifier"),
        (CERT + 'certifier = "smoothing"\ntau = 1.2\nmin = 0.5', "tau", "< 1"),
        (CERT + 'certifier = "smoothing"\ncorrection = "bh"\nmin = 0.5', "correction", "holm"),
        (CERT + "lipschitz = -1\nmin = 0.5", "lipschitz", "positive number"),
        (CERT.replace("certified_pixel_accuracy", "accuracy") + "min = 0.5", "metric", "unknown"),
        (
            'id = "s"\nkind = "certificate_soundness"\nnorm = "l2"\neps = 0.1\nattacks = ["x"]',
            "attacks",
            "unknown attack",
        ),
        ('id = "l"\nkind = "lipschitz"\nmin = 1.0', "max", "claimed constant as 'max'"),
    ],
)
def test_bad_certificate_claims_name_the_key(table: str, key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse(table)
    assert info.value.key == key


class Scaled(nn.Module):
    """The demo network followed by a 1x1 convolution scaling the logits by ``factor``: still
    a plain Sequential, so its bound is computable, and an honest twin at factor 1."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        from audit.model import load_model
        from audit.resources import demo_model_file

        self.net = nn.Sequential(
            load_model(demo_model_file()).module.model, nn.Conv2d(8, 8, 1, bias=False)
        )
        with torch.no_grad():
            self.net[1].weight.copy_(torch.eye(8).view(8, 8, 1, 1) * factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def twin(tmp_path: Path, factor: float) -> Path:
    from audit.model import load_model
    from audit.resources import demo_model_file

    meta = load_model(demo_model_file()).metadata.to_dict()
    meta.update(lipschitz=1.0, lipschitz_source="the model's card (claims 1-Lipschitz)")
    traced = torch.jit.trace(Scaled(factor).net.eval(), torch.rand(1, 3, 64, 128))
    path = tmp_path / f"twin-{factor:g}.pt"
    torch.jit.save(traced, str(path), _extra_files={"audit.json": json.dumps(meta)})
    return path


TWIN_SUITE = """
name = "lie"

[[claims]]
id = "lipschitz"
kind = "lipschitz"
max = 1.01

[[claims]]
id = "soundness"
kind = "certificate_soundness"
certifier = "lipschitz"
lipschitz = "claimed"
norm = "l2"
# A global constant makes per-pixel certificates conservative, so a 5x lie is only caught
# by an attack at a radius where a certified pixel is still within reach.
eps = 1.0
steps = 20
search_examples = 5
attacks = ["pgd", "search"]

[[claims]]
id = "certified-pa"
kind = "certified"
certifier = "lipschitz"
lipschitz = "claimed"
norm = "l2"
eps = 0.05
metric = "certified_pixel_accuracy"
min = 0.0
"""


@pytest.mark.slow
def test_a_model_lying_about_its_constant_fails_with_a_counterexample_and_its_twin_passes(
    pytester: pytest.Pytester, run_audit, tmp_path: Path
) -> None:
    pytester.makefile(".toml", lie=TWIN_SUITE)
    data = "synthetic?n=2&size=64x128"
    honest = run_audit(
        "--audit", str(twin(tmp_path, 1.0)), "--audit-suite", "lie.toml", "--audit-data", data
    )
    honest.assert_outcomes(passed=3)
    honest_record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    (sound,) = [c for c in honest_record["claims"] if c["id"] == "soundness"]
    pgd = next(c for c in sound["evidence"]["checks"] if c["attack"] == "pgd")
    # the true constant bounds every margin drop (no pixel is certified at this radius here,
    # so there may be none to measure)
    assert pgd["margin_use_max"] is None or pgd["margin_use_max"] <= 1 + 1e-6
    liar = run_audit(
        "--audit",
        str(twin(tmp_path, 5.0)),
        "--audit-suite",
        "lie.toml",
        "--audit-data",
        data,
        "--audit-report",
        "liar-report",
    )
    liar.assert_outcomes(failed=3)
    liar.stdout.fnmatch_lines(
        [
            "*claim 'lipschitz' violated: lower bound of the L2 Lipschitz constant shown by two "
            "inputs * is 4.9*",
            "*claim 'soundness' violated: number of violations*",
            "*the claimed Lipschitz constant 1 (claimed in the model's card*) is false*",
        ],
        consecutive=False,
    )
    record = json.loads((pytester.path / "liar-report" / "results.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    evidence = claims["soundness"]["evidence"]
    assert evidence["counterexample"]["pixel"] and evidence["counterexample"]["lipschitz"] == 1.0
    # margins fell faster than the claimed constant allows: the lie shows in the power measure
    pgd = next(c for c in evidence["checks"] if c["attack"] == "pgd")
    assert pgd["margin_use_max"] > 1.05
    for name in ("input", "perturbation", "falsifying_x", "falsifying_y"):
        assert (pytester.path / "liar-report" / evidence["files"][name]).is_file()
    assert claims["lipschitz"]["evidence"]["lower_bound"] > 1.01
    assert claims["lipschitz"]["evidence"]["bound"]["value"] > 5.0  # proven, and beyond 1
    for name in ("x", "y"):  # the refuting pair
        assert (
            pytester.path / "liar-report" / claims["lipschitz"]["evidence"]["files"][name]
        ).is_file()
    html = (pytester.path / "liar-report" / "index.html").read_text()
    assert "evidence/" in html


class SineNet(torch.nn.Module):
    """A per-pixel linear map through a sine: no bound is computed for ``sin``, so only the
    falsification search can speak (its true constant is the convolution's, times ``scale``)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.conv(x)) * self.scale


@pytest.mark.parametrize(
    ("scale", "claimed", "outcome"),
    [(50.0, 0.01, "refuted"), (1.0, 1000.0, "not decided")],
)
def test_a_lipschitz_claim_without_a_bound_is_refuted_or_not_decided_never_passed(
    pytester: pytest.Pytester, run_audit, scale: float, claimed: float, outcome: str
) -> None:
    torch.manual_seed(0)
    model = save_torchscript(SineNet(scale), pytester.path / "sine.pt")
    pytester.makefile(
        ".toml", gate=f'[[claims]]\nid = "lip"\nkind = "lipschitz"\nmax = {claimed}\n'
    )
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(failed=1)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    claim = record["claims"][0]
    assert claim["evidence"].get("bound") is None or outcome == "not decided"
    if outcome == "refuted":
        assert claim["verdict"] == "failed"
        assert claim["message"].startswith(
            "claim 'lip' violated: lower bound of the L2 Lipschitz constant shown by two inputs"
        )
        assert claim["measured"] > claimed
        assert set(claim["evidence"]["files"]) == {"x", "y"}
    else:
        assert claim["verdict"] == "error" and claim["measured"] is None
        assert "the claim is not decided: no upper bound can be computed" in claim["message"]
        assert "found no pair of inputs that refutes it" in claim["message"]
    assert (pytester.path / "audit-report" / "index.html").is_file()


CONDITIONAL_SUITE = """
name = "cond"
{require}
[[claims]]
id = "claimed"
kind = "certified"
lipschitz = "claimed"
norm = "l2"
eps = 0.05
metric = "certified_fraction"
min = 0.0

[[claims]]
id = "computed"
kind = "certified"
lipschitz = "computed"
norm = "l2"
eps = 0.05
metric = "certified_fraction"
min = 0.0
"""


@pytest.mark.parametrize("require", ["", "suite", "option"])
def test_a_certificate_on_a_claimed_constant_says_so_and_fails_when_proof_is_required(
    pytester: pytest.Pytester, run_audit, require: str
) -> None:
    # The demo model claims L = 1.00021 in its metadata and is also bounded from its weights.
    suite = CONDITIONAL_SUITE.format(require="require_proof = true" if require == "suite" else "")
    pytester.makefile(".toml", cond=suite)
    args = [
        "--audit",
        "--audit-suite",
        "cond.toml",
        "--audit-data",
        TINY_DATA,
        "--audit-limit",
        "2",
    ]
    if require == "option":
        args.append("--audit-require-proof")
    result = run_audit(*args)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    claims = {c["id"]: c for c in record["claims"]}
    claimed, computed = claims["claimed"], claims["computed"]
    assert claimed["unproven"] == "the claimed L = 1.00021, not proven from the weights"
    assert claimed["evidence"]["proof"] == "conditional"
    assert "conditional on the claimed L = 1.00021, not proven" in claimed["message"]
    assert computed["unproven"] is None and computed["evidence"]["proof"] == "proven"
    assert computed["verdict"] == "passed"
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "conditional on the claimed L = 1.00021" in html
    if require:
        result.assert_outcomes(passed=1, failed=1)
        assert claimed["verdict"] == "failed" and claimed["require_proof"] is True
        assert claimed["message"].startswith(
            "claim 'claimed' violated: it is conditional on the claimed L = 1.00021, not "
            "proven from the weights, and proof is required (require_proof)"
        )
    else:
        result.assert_outcomes(passed=2)
        assert claimed["verdict"] == "passed" and claimed["require_proof"] is False

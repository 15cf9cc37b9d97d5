"""The report as a dossier: the sections in the order an assessor reads them, the traceability
matrix, where thresholds come from, tool confidence, incidents, residual risk, the sign-off
block and the evidence manifest, checked by parsing the page a real run leaves."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from report_helpers import section_html
from test_report_certificates import make_results as make_certificate_results

from audit.environment import environment, libraries_loaded
from audit.errors import ConfigError
from audit.files import MANIFEST_FILE
from audit.record.diagnostics import diagnostic_coverage
from audit.record.manifest import referenced_files, write_manifest
from audit.report import render_html, render_report
from audit.report.certificates import build_certificates
from audit.report.risk import build_risk
from audit.suite import load_suite, override_thresholds, parse_suite
from conftest import TINY_DATA, report_files

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

#: the sections in the order an assessor reads them (ISO/IEC/IEEE 29119-3, UL 4600)
DOSSIER = [
    "summary",
    "scope",
    "claims",
    "environment",
    "results",
    "clean",
    "confusion",
    "attacks",
    "certificates",
    "incidents",
    "residual-risk",
    "conclusion",
    "reproduction",
    "provenance",
    "manifest",
]

GATE = """
name = "gate"
description = "A release gate with every outcome"
intended_use = "Drivable-area segmentation for a low-speed shuttle"
operational_domain = "Daylight, dry roads, urban campus, 32x64 camera crops"
non_claims = ["night driving", "snow"]

[[claims]]
id = "fgsm"
statement = "IoU ratio under FGSM stays at or above 0"
kind = "attack"
attack = "fgsm"
norm = "linf"
eps = "2/255"
metric = "iou_ratio"
min = 0.0

[[claims]]
id = "bound"
statement = "The model is at most 1e6-Lipschitz (L2)"
kind = "lipschitz"
max = 1e6

[[claims]]
id = "floor"
statement = "Pixel accuracy is at least 0"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0
rationale = "Hazard analysis HA-12: any output at all"

[[claims]]
id = "unicorns"
statement = "Unicorns are segmented"
kind = "clean"
metric = "class_iou:unicorn"
min = 0.5

[[claims]]
id = "ceiling"
statement = "Pixel accuracy is at most 0.001 (it is not)"
kind = "clean"
metric = "pixel_accuracy"
max = 0.001

[[claims]]
id = "later"
statement = "mIoU is at least 0"
kind = "clean"
metric = "miou"
min = 0.0
"""


class _Page(HTMLParser):
    """Section ids in page order, and the text of elements by id and by class."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.by_id: dict[str, str] = {}
        self.counts: dict[str, str] = {}
        self._open: list[tuple[str, str | None, str]] = []
        self._text: dict[int, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section" and found.get("id"):
            self.sections.append(str(found["id"]))
        self._open.append((tag, found.get("id"), found.get("class") or ""))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag: str) -> None:
        if not self._open:
            return
        depth = len(self._open)
        _, ident, css = self._open.pop()
        text = "".join(self._text.pop(depth, []))
        if ident:
            self.by_id[ident] = text.strip()
        match = re.search(r"\bcount-(\w+)\b", css)
        if match and match.group(1) != "alert":
            self.counts[match.group(1)] = re.sub(r"\D", "", text)
        if depth - 1 in self._text:
            self._text[depth - 1].append(text)

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text[len(self._open)].append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


@pytest.fixture
def dossier(pytester: pytest.Pytester, run_audit, tiny_model: Path) -> Path:
    pytester.makefile(".toml", gate=GATE)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA,
        "--audit-threshold", "floor=0.01", "--maxfail", "2",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    return pytester.path / "audit-report"


def test_dossier_has_every_section_in_reading_order_counts_claims_and_hashes(
    dossier: Path,
) -> None:
    record, html = report_files(dossier)
    page = _parse(html)
    assert page.sections == DOSSIER

    verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
    assert verdicts == {
        "fgsm": "passed", "bound": "passed", "floor": "passed",
        "unicorns": "error", "ceiling": "failed", "later": "not_run",
    }  # fmt: skip
    # the cover's counts are the record's, and failures lead the headline over the error
    assert {k: int(v) for k, v in page.counts.items()} == {
        "total": 6, "passed": 3, "failed": 1, "error": 1, "skipped": 0, "not_run": 1,
    }  # fmt: skip
    summary = section_html(html, "summary")
    assert "FAIL: 6 claim(s), 3 passed, 1 failed, 1 errors, 1 not run." in summary

    # every claim is a row of the traceability matrix, and is listed in the incidents
    claims = section_html(html, "claims")
    incidents = section_html(html, "incidents")
    for claim in record["claims"]:
        assert f'<code class="nodeid">{claim["nodeid"]}</code>' in claims
    for nodeid in ("gate::unicorns", "gate::ceiling", "gate::later"):
        assert nodeid in incidents
    assert "Failed claims (1)" in incidents and "Claims that did not run (1)" in incidents

    # the manifest: its own hash on the cover and in the sign-off block, and each listed
    # file's hash in the annex, all equal to the files' bytes
    manifest = (dossier / MANIFEST_FILE).read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()
    assert page.by_id["cover-manifest-sha256"] == digest
    assert page.by_id["signoff-manifest-sha256"] == digest
    annex = section_html(html, "manifest")
    listed = [line.split("  ", 1) for line in manifest.decode().splitlines()]
    assert [name for _, name in listed][:1] == ["results.json"]
    assert "suites/gate.toml" in [name for _, name in listed]
    for expected, name in listed:
        assert hashlib.sha256((dossier / name).read_bytes()).hexdigest() == expected
        assert expected in annex
    assert "all match" in annex


def test_dossier_says_where_thresholds_come_from_and_what_is_in_scope(dossier: Path) -> None:
    record, html = report_files(dossier)
    floor = next(c for c in record["claims"] if c["id"] == "floor")
    assert {c["threshold_source"]["origin"] for c in record["claims"]} == {"suite", "override"}
    assert floor["threshold"] == {"min": 0.01, "max": None}
    assert floor["threshold_source"] == {
        "origin": "override",
        "where": "--audit-threshold: floor",
        "replaced": {"min": 0.0, "max": None},
    }
    assert floor["rationale"] == "Hazard analysis HA-12: any output at all"
    claims = section_html(html, "claims")
    assert "overridden" in claims and "the suite said &gt;= 0" in claims
    assert "Hazard analysis HA-12" in claims
    assert "Threshold of gate::floor overridden" in section_html(html, "incidents")

    scope = section_html(html, "scope")
    assert "Drivable-area segmentation for a low-speed shuttle" in scope
    assert "Daylight, dry roads" in scope and "night driving" in scope
    assert record["suites"][0]["non_claims"] == ["night driving", "snow"]
    assert "night driving" in section_html(html, "residual-risk")

    # the suite as run is kept, printed in the annex and hashed
    original = (dossier.parent / "gate.toml").read_bytes()
    assert (dossier / "suites" / "gate.toml").read_bytes() == original
    assert "Drivable-area segmentation" in section_html(html, "reproduction")
    assert record["suites"][0]["sha256"] == hashlib.sha256(original).hexdigest()


def test_dossier_records_the_environment_and_the_checks_that_could_not_apply(
    dossier: Path,
) -> None:
    record, html = report_files(dossier)
    env = record["provenance"]["environment"]
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert record["provenance"]["libraries"]["torch"] == torch.__version__.split("+")[0]
    confidence = section_html(html, "environment")
    assert f"{env['torch_threads']} intra-op" in confidence
    assert "1 attack and 0 minimal-norm evaluation(s) left the model" in confidence
    # one attack at one epsilon: most checks have nothing to judge, and none of those may
    # read as clear
    coverage = record["diagnostic_coverage"]
    idle = {name for name, c in coverage.items() if c["status"] == "not applicable"}
    assert {"iterative_weaker", "not_monotonic", "low_success"} <= idle
    assert confidence.count("COULD NOT APPLY") == len(idle)
    for name in idle:
        row = re.search(rf"<tr><td><code>{name}</code>.*?</tr>", confidence, re.S)
        assert row and "COULD NOT APPLY" in row.group(0) and "CLEAR" not in row.group(0)


def test_a_changed_evidence_file_shows_on_the_cover_after_rerendering(dossier: Path) -> None:
    (dossier / "suites" / "gate.toml").write_text(GATE + "\n# edited after the run\n")
    render_report(dossier)
    html = (dossier / "index.html").read_text()
    assert "1 listed file(s) no longer match" in section_html(html, "summary")
    assert "CHANGED since the run" in section_html(html, "manifest")


def test_rerendering_the_dossier_is_byte_identical(dossier: Path) -> None:
    before = (dossier / "index.html").read_bytes()
    render_report(dossier)
    assert (dossier / "index.html").read_bytes() == before


# -- the parts, one at a time -----------------------------------------------------------


@pytest.mark.hand_made_records("a fragment of a record")
def test_manifest_lists_only_files_the_record_names(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "a.png").write_bytes(b"png")
    (tmp_path / "examples" / "stale.png").write_bytes(b"left by an earlier run")
    record = {
        "schema_version": 1,
        "claims": [{"message": "model 'x.pt' failed: a long sentence, not a path " * 20}],
        "evaluations": {"clean": {"examples": [{"input": "examples/a.png"}]}},
        "provenance": {"model": {"path": "examples/stale.png"}},
    }
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert referenced_files(tmp_path, record) == ["examples/a.png"]
    lines = write_manifest(tmp_path, record).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["results.json", "examples/a.png"]


def test_threshold_origins_from_suites(tmp_path: Path) -> None:
    suite = load_suite("smoke")
    assert suite.builtin
    assert {c.threshold_source["origin"] for c in suite.claims} == {"built-in suite"}
    path = tmp_path / "own.toml"
    path.write_text(GATE)
    own = load_suite(path)
    assert not own.builtin and own.claims[0].threshold_source["origin"] == "suite"
    changed = override_thresholds(own, {"gate::ceiling": {"max": 0.5}}, source="audit.toml")
    ceiling = next(c for c in changed.claims if c.id == "ceiling")
    assert ceiling.threshold_source == {
        "origin": "override", "where": "audit.toml: gate::ceiling",
        "replaced": {"min": None, "max": 0.001},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('intended_use = ""', "intended_use"),
        ("non_claims = [1]", "non_claims"),
        ("operational_domain = 3", "operational_domain"),
    ],
)
def test_scope_keys_are_checked(tmp_path: Path, extra: str, key: str) -> None:
    import tomllib

    data = tomllib.loads(extra + "\n" + GATE.split("non_claims", 1)[1].split("\n", 1)[1])
    with pytest.raises(ConfigError, match=key):
        parse_suite(data, path=tmp_path / "s.toml")


def test_a_rationale_must_be_text(tmp_path: Path) -> None:
    import tomllib

    data = tomllib.loads(GATE.replace('rationale = "Hazard analysis HA-12: any output at all"',
                                      "rationale = 12"))  # fmt: skip
    with pytest.raises(ConfigError, match="rationale"):
        parse_suite(data, path=tmp_path / "s.toml")


def _attack(attack: str, family: str, eps: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{attack}-{eps}", "attack": attack, "family": family, "norm": "linf",
        "eps": eps, "eps_text": f"{eps:g}", "metrics": {"miou": 0.5}, "success_rate": 0.3,
        **extra,
    }  # fmt: skip


def test_diagnostic_coverage_never_calls_a_check_that_could_not_run_clear() -> None:
    one_fgsm = [_attack("fgsm", "single_step", 4 / 255)]
    coverage = diagnostic_coverage(one_fgsm, [])
    assert coverage["iterative_weaker"]["status"] == "not applicable"
    assert "single-step and an iterative" in coverage["iterative_weaker"]["reason"]
    assert coverage["not_monotonic"]["status"] == "not applicable"
    assert coverage["low_success"]["status"] == "not applicable"
    assert coverage["bad_gradients"]["status"] == "not applicable"

    sweep = [
        _attack("fgsm", "single_step", eps, gradients={"image_gradients": 4})
        for eps in (2 / 255, 4 / 255)
    ] + [_attack("ifgsm", "iterative", eps) for eps in (4 / 255, 16 / 255)]
    coverage = diagnostic_coverage(sweep, [{"check": "not_monotonic"}])
    assert coverage["iterative_weaker"] == {"status": "clear", "evaluations": 1, "reason": None}
    assert coverage["not_monotonic"]["status"] == "flagged"
    assert coverage["low_success"]["status"] == "clear"
    assert coverage["bad_gradients"]["evaluations"] == 2
    assert diagnostic_coverage([], [])["noise_as_strong"]["reason"] == (
        "no attack was evaluated in this run"
    )


def _soundness(tightness: float, kind: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "claims": [],
        "evaluations": {
            "soundness": [
                {
                    "claim": "s::soundness[l2-0.1]",
                    "lipschitz": {"value": 1.0, "kind": kind},
                    "checks": [{"attack": "pgd", "tightness_median": tightness}],
                }
            ]
        },
    }


def test_residual_risk_reads_soundness_power_off_the_tightness() -> None:
    loose = build_risk(_soundness(0.003, "computed"))["soundness"]
    assert loose[0]["level"] == "medium"
    assert "333 times too small" in loose[0]["text"] and "low-power" in loose[0]["text"]
    claimed = build_risk(_soundness(0.003, "claimed"))["soundness"]
    assert claimed[0]["level"] == "high" and "claimed, not proven" in claimed[0]["text"]
    tight = build_risk(_soundness(0.8, "computed"))["soundness"]
    assert tight[0]["level"] == "low" and "low-power" not in tight[0]["text"]


def test_running_header_is_a_safe_css_string(tmp_path: Path) -> None:
    results = {
        "schema_version": 1,
        "provenance": {"model": {"metadata": {"name": 'x"</style><script>'}}},
    }
    html = render_html(results, report_dir=tmp_path)
    header = re.search(r"@top-center \{ content: (.*?); \}", html)
    assert header is not None
    assert "</style>" not in header.group(1) and "<script>" not in html
    assert header.group(1).startswith('"SegAudit: x\\22 \\3c /style\\3e ')


def test_environment_and_libraries_describe_this_process() -> None:
    env = environment()
    assert env["cpu_count"] and env["torch_threads"] == torch.get_num_threads()
    assert env["float32_matmul_precision"] in ("highest", "high", "medium")
    libraries = libraries_loaded()
    assert libraries["torch"] and libraries["numpy"]


def test_a_refuted_constant_is_never_described_as_unbroken() -> None:
    # the certificates section once called a claimed constant "a hypothesis the
    # falsification search did not break" right above the row saying the search broke it
    results = make_certificate_results()
    results["evaluations"]["certificates"][0]["lipschitz"] = {
        "value": 1.5, "kind": "claimed", "description": "claimed in the metadata",
        "lower_bound": 2.25, "bound": None,
    }  # fmt: skip
    results["evaluations"]["soundness"] = []
    results["claims"] = []
    context = build_certificates(results)
    assert context is not None
    (source,) = context["sources"]
    assert source["kind"] == "claimed, REFUTED" and source["kind_css"] == "fail"
    assert "did not break" not in source["meaning"] and "2.25" in source["meaning"]


def test_a_constant_refuted_by_a_soundness_check_reads_refuted() -> None:
    results = make_certificate_results()
    entry = results["evaluations"]["soundness"][0]
    entry["lipschitz"] = {"value": 0.5, "kind": "claimed", "description": "claimed"}
    entry["falsified"] = {"lower_bound": 1.0, "method": "gradient ascent", "files": {}}
    context = build_certificates(results)
    assert context is not None
    refuted = [s for s in context["sources"] if s["kind"] == "claimed, REFUTED"]
    assert len(refuted) == 1 and "did not break" not in refuted[0]["meaning"]


REPO = Path(__file__).resolve().parents[1]


def test_readme_names_the_report_sections_in_page_order() -> None:
    from audit.report import sections

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    part = readme.split("## The report", 1)[1].split("\n### ", 1)[0]
    named = re.findall(r"^\d+\. \*\*(.+?)\*\*", part, re.M)
    titles = [s.title for s in sections()]
    positions = []
    for name in named:
        if name == "Annexes":
            found = [i for i, t in enumerate(titles) if t.startswith("Annex")]
        elif name.startswith("Results by claim kind"):
            found = [titles.index("Results by claim kind")]
        else:
            found = [titles.index(name.split(" (")[0])]
        assert found, name
        positions.append(found[0])
    assert len(named) == 9 and positions == sorted(positions)


def test_the_documented_suite_example_parses(tmp_path: Path) -> None:
    import tomllib

    docs = (REPO / "docs" / "claims.md").read_text(encoding="utf-8")
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    suite = parse_suite(tomllib.loads(example), path=tmp_path / "release-gate.toml")
    assert suite.scope["non_claims"][0] == "night driving"
    assert suite.claims[0].rationale.startswith("Hazard analysis HA-12")


def test_residual_risk_lists_the_corruptions_tested() -> None:
    results = {
        "schema_version": 1,
        "claims": [{"kind": "corruption", "nodeid": "c::fog[s3]", "verdict": "passed"}],
        "evaluations": {
            "corruptions": [
                {"corruption": "fog", "severity": 3.0},
                {"corruption": "snow", "severity": 5.0},
            ]
        },
    }
    risk = build_risk(results)
    assert any("natural corruptions (fog, snow), severities up to 5" in t for t in risk["tested"])
    assert not any("natural corruptions" in t for t in risk["untested"])
    assert risk["untested"][0].startswith("No adversarial attack was run")
    assert not any("white-box" in t for t in risk["untested"])

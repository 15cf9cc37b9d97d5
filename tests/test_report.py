"""The HTML report: self-contained, escaped, tolerant of partial results, well-formed."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from report_helpers import drawn_images, section_html

import audit.files
from audit import report
from audit.errors import ConfigError, SegAuditError
from audit.report import register_section, render_html, render_report, unregister_section
from audit.report import render as report_render

REPO_ROOT = Path(__file__).resolve().parent.parent
CLASSES = [
    ("road", [128, 64, 128]),
    ("car", [0, 0, 142]),
    ("sky <b>blue</b>", [70, 130, 180]),
    ("ghost-class", [220, 20, 60]),
]
EXAMPLE_FILES = ("clean-000-input.png", "clean-000-gt.png", "clean-000-pred.png")
XSS = '<script>alert("pwned")</script>'


#: a claim entry's terms the tests here do not vary
CLAIM_TERMS = {
    "statistic": "estimate",
    "timeout": None,
    "require_proof": False,
    "unproven": None,
    "source": "/s/smoke.toml",
}


def make_results() -> dict[str, Any]:
    """A schema-1 results mapping shaped like the one the plugin writes."""
    return {
        "schema_version": 1,
        "complete": True,
        "status": "failed",
        "summary": {"total": 3, "passed": 1, "failed": 1, "error": 1, "skipped": 0, "not_run": 0},
        "progress": {"claims_done": 3, "claims_total": 3, "updated_at": "2026-11-22T23:10:12Z"},
        "provenance": {
            "model": {
                "path": "/models/demo_segnet.pt",
                "sha256": "ab12" * 16,
                "format": "torchscript",
                "metadata": {
                    "name": "demo-segnet",
                    "num_classes": 4,
                    "class_names": [name for name, _ in CLASSES],
                    "ignore_index": 255,
                    "lipschitz": 1.0,
                    "mean": None,
                    "std": None,
                    "input_size": [8, 16],
                },
            },
            "dataset": {
                "spec": "synthetic",
                "kind": "synthetic",
                "fingerprint": "cd34" * 16,
                "num_samples": 64,
                "class_names": [name for name, _ in CLASSES],
                "ignore_index": 255,
                "resolution": [8, 16],
                "describe": {"kind": "synthetic", "seed": 0},
            },
            "seed": 0,
            "device_requested": "auto",
            "device": "cpu",
            "trust_pickle": {"enabled": False, "source": "default"},
            "batch_size": 16,
            "limit": None,
            "versions": {"python": "3.11.7", "torch": "2.14.1", "segaudit": "0.1.0"},
            "command_line": ["pytest", "--audit", "demo", "--report", "out dir"],
            "started_at": "2026-11-22T23:10:00+00:00",
            "finished_at": "2026-11-22T23:10:12+00:00",
            "duration_s": 12.3,
            "hostname": "review-box",
        },
        "suites": [{"name": "smoke", "description": "Smoke checks", "path": "/s/smoke.toml"}],
        "errors": [],
        "claims": [
            {
                "nodeid": "smoke::clean-miou",
                "suite": "smoke",
                "id": "clean-miou",
                "statement": "Clean mIoU is at least 0.75",
                "kind": "clean",
                "metric": "miou",
                "params": {"metric": "miou", "statistic": "estimate"},
                "threshold": {"min": 0.75, "max": None},
                **CLAIM_TERMS,
                "measured": 0.81,
                "compared": 0.81,
                "interval": {
                    "low": 0.79,
                    "high": 0.83,
                    "confidence": 0.95,
                    "method": "percentile bootstrap over images",
                    "n_resamples": 1000,
                },
                "verdict": "passed",
                "message": "mIoU is 0.810 on 64 images; claim requires >= 0.75",
                "duration_s": 0.4,
                "num_samples": 64,
                "evidence": {},
            },
            {
                "nodeid": "smoke::xss",
                "suite": "smoke",
                "id": "xss",
                "statement": f"Pixel accuracy stays low {XSS}",
                "kind": "clean",
                "metric": "pixel_accuracy",
                "params": {},
                "threshold": {"min": None, "max": 0.5},
                **CLAIM_TERMS,
                "measured": 0.93,
                "compared": 0.93,
                "interval": {"low": 0.91, "high": 0.95, "confidence": 0.9},
                "verdict": "failed",
                "message": "pixel accuracy is 0.930 (90% CI 0.910-0.950); claim requires <= 0.5",
                "duration_s": 0.2,
                "num_samples": 64,
                "evidence": {},
            },
            {
                "nodeid": "smoke::broken",
                "suite": "smoke",
                "id": "broken",
                "statement": "An attack that crashed",
                "kind": "attack",
                "metric": "miou",
                "params": {},
                "threshold": {"min": 0.5, "max": None},
                **CLAIM_TERMS,
                "measured": None,
                "compared": None,
                "interval": None,
                "verdict": "error",
                "message": "EvaluationError: logits contain NaN",
                "duration_s": 0.1,
                "num_samples": None,
                "evidence": {},
            },
        ],
        "evaluations": {
            "clean": {
                "num_samples": 64,
                "num_pixels": 8192,
                "resolution": [8, 16],
                "metrics": {"miou": 0.81, "pixel_accuracy": 0.93, "mean_class_accuracy": 0.86},
                "intervals": {
                    "miou": {"low": 0.79, "high": 0.83, "confidence": 0.95},
                    "pixel_accuracy": {"low": 0.91, "high": 0.95, "confidence": 0.95},
                },
                "aggregation": "dataset-level: one confusion matrix summed over all images",
                "per_class": [
                    {"name": name, "iou": iou, "accuracy": acc, "support": support, "color": color}
                    for (name, color), iou, acc, support in zip(
                        CLASSES,
                        [0.95, 0.7, 0.78, None],
                        [0.97, 0.8, 0.9, None],
                        [5000, 2000, 1192, 0],
                        strict=True,
                    )
                ],
                "confusion_matrix": [
                    [4850, 100, 50, 0],
                    [300, 1600, 100, 0],
                    [0, 119, 1073, 0],
                    [0, 0, 0, 0],
                ],
                "examples": [
                    {
                        "name": "synthetic-000003",
                        "image": f"examples/{EXAMPLE_FILES[0]}",
                        "ground_truth": f"examples/{EXAMPLE_FILES[1]}",
                        "prediction": f"examples/{EXAMPLE_FILES[2]}",
                        "pixel_accuracy": 0.9,
                    }
                ],
            }
        },
        "diagnostics": [],
        "diagnostic_checks": {},
    }


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    examples = tmp_path / "examples"
    examples.mkdir()
    for index, name in enumerate(EXAMPLE_FILES):
        Image.new("RGB", (16, 8), tuple(CLASSES[index][1])).save(examples / name)
    (tmp_path / "results.json").write_text(json.dumps(make_results()), encoding="utf-8")
    return tmp_path


def strip_tags(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# Elements HTML lets stand without an end tag; everything else must be closed, in order.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class BalanceChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []
        self.errors: list[str] = []
        self.seen: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> at {self.getpos()} closes {self.stack[-1:]}")
            return
        self.stack.pop()


def test_page_is_self_contained_with_images_inlined(report_dir: Path) -> None:
    html = render_html(make_results(), report_dir=report_dir)

    assert "http://" not in html and "https://" not in html
    assert "//" not in re.sub(
        r"data:[^\"]+", "", " ".join(re.findall(r'(?:src|href)="[^"]*"', html))
    )
    assert not re.search(r'(?:src|href)="/', html)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    drawn = drawn_images(html, html)
    assert [(alt, href) for alt, href, _ in drawn] == [
        ("input image of synthetic-000003", "examples/clean-000-input.png"),
        ("ground truth of synthetic-000003", "examples/clean-000-gt.png"),
        ("prediction for synthetic-000003", "examples/clean-000-pred.png"),
    ]
    # Thumbnails are inline WebP; the links lead to the full-resolution files beside the page.
    assert all(uri.startswith("data:image/webp;base64,UklGR") for _, _, uri in drawn)
    for href in re.findall(r'href="([^"#][^"]*)"', html):
        if not href.startswith("data:"):
            assert (report_dir / href).resolve().is_relative_to(report_dir.resolve())
    assert "<style>" in html and ".badge-fail" in html


def test_user_text_is_escaped(report_dir: Path) -> None:
    html = render_html(make_results(), report_dir=report_dir)

    assert XSS not in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert "<b>blue</b>" not in html and "sky &lt;b&gt;blue&lt;/b&gt;" in html


def test_claims_show_verdicts_values_thresholds_and_failure_messages(report_dir: Path) -> None:
    html = render_html(make_results(), report_dir=report_dir)
    text = strip_tags(html)

    assert ">FAIL</div>" in html  # header badge reflects status "failed"
    assert "pixel accuracy is 0.930 (90% CI 0.910-0.950); claim requires &lt;= 0.5" in html
    assert "EvaluationError: logits contain NaN" in html
    assert "0.930" in text and "90% CI [0.910, 0.950]" in text
    assert "&lt;= 0.5" in html and "&gt;= 0.75" in html
    # Failures first, then errors, then passes.
    order = [
        html.index(f'<code class="nodeid">smoke::{c}</code>')
        for c in ("xss", "broken", "clean-miou")
    ]
    assert order == sorted(order)
    # The summary links each failure to its row.
    anchor = re.search(r'<tr id="(claim-\d+)" class="claim claim-fail"', html)
    assert anchor and f'href="#{anchor.group(1)}"' in html


def test_clean_section_has_metrics_classes_chart_and_confusion(report_dir: Path) -> None:
    html = render_html(make_results(), report_dir=report_dir)
    text = strip_tags(html)

    assert "mIoU" in text and "95% CI [0.790, 0.830]" in text
    assert "dataset-level: one confusion matrix summed over all images" in text
    for name in ("road", "car", "ghost-class"):
        assert name in text
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert 'fill="rgb(128, 64, 128)"' in svg and 'fill="rgb(0, 0, 142)"' in svg
    assert 'width="399.0"' in svg  # road: 0.95 of the 420 px bar area
    assert "n/a" in text  # ghost-class has no IoU
    assert "pixel accuracy 0.900" in text
    # Confusion rows are normalised: 4850 / 5000 = 97.0 %, the empty row shows a dash.
    confusion = html[html.index('<table class="confusion">') :]
    assert ">97.0</td>" in confusion and ">80.0</td>" in confusion
    assert "—" in confusion[confusion.index("ghost-class") :]


def test_missing_image_shows_placeholder_instead_of_crashing(report_dir: Path) -> None:
    (report_dir / "examples" / EXAMPLE_FILES[1]).unlink()
    results = make_results()
    example = results["evaluations"]["clean"]["examples"][0]
    example["prediction"] = "../../etc/passwd"
    example["image"] = "<img src=x onerror=alert(1)>.png"

    html = render_html(results, report_dir=report_dir)

    assert "Missing image: examples/clean-000-gt.png" in html
    assert "outside the report folder, not embedded: ../../etc/passwd" in html
    assert "Missing image: &lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "<img " not in html  # none of the three could be embedded

    example["image"] = "bad\x00name.png"
    assert "Invalid image path" in render_html(results, report_dir=report_dir)


def test_partial_results_show_banner_and_render(report_dir: Path) -> None:
    results = make_results()
    results["complete"] = False
    results["status"] = "incomplete"
    results["summary"] = {"total": 3, "passed": 1, "failed": 0, "error": 0, "not_run": 2}
    results["claims"][1]["verdict"] = "not_run"
    results["claims"][2] = {"nodeid": "smoke::later", "verdict": "not_run"}
    del results["evaluations"]["clean"]
    results["errors"] = [{"where": "suites/extra.toml", "message": "claim 'x': unknown kind <y>"}]

    html = render_html(results, report_dir=report_dir)
    text = strip_tags(html)

    assert "1 error outside any claim" in text
    assert "<code>suites/extra.toml</code>: claim &#39;x&#39;: unknown kind &lt;y&gt;" in html

    assert "This audit did not complete:" in text
    assert "2 of 3 claims were not run" in text and "no clean evaluation was recorded" in text
    assert "results below are partial" in text
    assert "INCOMPLETE" in text and "NOT RUN" in text
    assert 'id="clean"' not in html and 'href="#clean"' not in html
    assert 'id="confusion"' not in html


def test_complete_results_have_no_banner(report_dir: Path) -> None:
    assert "did not complete" not in render_html(make_results(), report_dir=report_dir)


def test_bare_minimum_results_render(tmp_path: Path) -> None:
    html = render_html({"schema_version": 1}, report_dir=tmp_path)

    assert "This audit did not complete" in html
    assert "No claims were recorded" in html


def test_malformed_section_data_is_reported_in_place(report_dir: Path) -> None:
    results = make_results()
    results["evaluations"]["clean"]["examples"] = 5  # not a list: the clean builder trips
    results["evaluations"]["clean"]["confusion_matrix"] = [[1, 2], [3]]

    html = render_html(results, report_dir=report_dir)

    clean = html[html.index('<section id="clean"') : html.index('<section id="confusion"')]
    assert "could not be rendered from results.json (TypeError:" in clean
    assert "not a square table of numbers" in html
    assert 'id="provenance"' in html and "smoke::clean-miou" in html


@pytest.mark.hand_made_records("unsupported versions on purpose")
@pytest.mark.parametrize(
    ("version", "match"),
    [(2, "newer SegAudit"), (0, "unknown schema_version"), ("1", "integer"), (None, "no 'schema")],
)
def test_unsupported_schema_version_raises(report_dir: Path, version: Any, match: str) -> None:
    results = make_results()
    results["schema_version"] = version
    (report_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")

    with pytest.raises(SegAuditError, match=match):
        render_report(report_dir)
    assert not (report_dir / "index.html").exists()


@pytest.mark.hand_made_records("a file that is not JSON")
def test_unreadable_results_file_raises(tmp_path: Path) -> None:
    with pytest.raises(SegAuditError, match="no results file"):
        render_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(SegAuditError, match="not valid JSON"):
        render_report(tmp_path)
    with pytest.raises(SegAuditError, match="does not exist"):
        render_report(tmp_path / "absent")


def test_render_report_writes_atomically(report_dir: Path) -> None:
    (report_dir / "index.html").write_text("old report", encoding="utf-8")

    path = render_report(report_dir)

    assert path == report_dir / "index.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in report_dir.iterdir()) == [
        "examples",
        "index.html",
        "results.json",
    ]
    assert os.stat(path).st_mode & 0o044 == 0o044  # readable by the reviewers, not just the owner


def test_failed_render_keeps_previous_report(
    report_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (report_dir / "index.html").write_text("old report", encoding="utf-8")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(audit.files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        render_report(report_dir)

    assert (report_dir / "index.html").read_text(encoding="utf-8") == "old report"
    assert sorted(p.name for p in report_dir.iterdir()) == [
        "examples",
        "index.html",
        "results.json",
    ]


def test_render_report_uses_given_results_and_is_deterministic(report_dir: Path) -> None:
    results = make_results()
    results["claims"][0]["statement"] = "Given in memory, not on disk"

    first = render_report(report_dir, results=results).read_text(encoding="utf-8")
    second = render_report(report_dir, results=copy.deepcopy(results)).read_text(encoding="utf-8")

    assert "Given in memory, not on disk" in first
    assert first == second


def _rerender(report_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit.report", str(report_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.hand_made_records("a record of a newer version")
def test_command_line_rerenders_index(report_dir: Path) -> None:
    done = _rerender(report_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(report_dir / "index.html")
    assert "smoke::clean-miou" in (report_dir / "index.html").read_text(encoding="utf-8")

    (report_dir / "results.json").write_text('{"schema_version": 99}', encoding="utf-8")
    failed = _rerender(report_dir)
    assert failed.returncode == 1
    assert "schema_version 99" in failed.stderr and "Traceback" not in failed.stderr


@pytest.fixture
def extra_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A copy of the templates folder with one more partial; sections added are removed after."""
    templates = tmp_path / "templates"
    shutil.copytree(report_render.templates_dir(), templates)
    (templates / "_extra.html.j2").write_text(
        '<p class="extra">{{ ctx.headline }}</p>{{ embed_image(ctx.image, "extra") }}\n',
        encoding="utf-8",
    )
    # render.py looks templates_dir up in its own namespace, so patch it there.
    monkeypatch.setattr(report_render, "templates_dir", lambda: templates)
    yield "_extra.html.j2"
    for key in ("extra", "extra-hidden"):
        if any(s.key == key for s in report.sections()):
            unregister_section(key)


def test_registered_section_renders_in_place(report_dir: Path, extra_partial: str) -> None:
    register_section(
        "extra",
        "Attack curves",
        extra_partial,
        lambda results: {"headline": f"{len(results['claims'])} claims <seen>", "image": None},
        before="provenance",
    )
    register_section("extra-hidden", "Never shown", extra_partial, lambda results: None)

    html = render_html(make_results(), report_dir=report_dir)

    assert '<p class="extra">3 claims &lt;seen&gt;</p>' in html
    assert '<a href="#extra">Attack curves</a>' in html
    assert html.index('id="extra"') < html.index('id="provenance"')
    assert "No image recorded" in html
    assert "Never shown" not in html and 'id="extra-hidden"' not in html


def test_register_section_rejects_bad_keys(extra_partial: str) -> None:
    def build(results: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="HTML id"):
        register_section("Bad Key", "t", extra_partial, build)
    with pytest.raises(ConfigError, match="already registered"):
        register_section("claims", "t", extra_partial, build)
    with pytest.raises(ConfigError, match="no section 'nope'"):
        register_section("extra", "t", extra_partial, build, after="nope")


def test_section_with_missing_template_raises(report_dir: Path) -> None:
    register_section("extra", "Extra", "_no_such_partial.html.j2", lambda results: {})
    try:
        with pytest.raises(SegAuditError, match="_no_such_partial"):
            render_html(make_results(), report_dir=report_dir)
    finally:
        unregister_section("extra")


def test_html_is_well_formed(report_dir: Path) -> None:
    html = render_report(report_dir).read_text(encoding="utf-8")
    checker = BalanceChecker()
    checker.feed(html)
    checker.close()

    assert checker.errors == []
    assert checker.stack == []
    structural = {"html", "head", "body", "header", "nav", "main", "section", "table", "svg"}
    assert structural <= checker.seen
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def test_page_renders_in_a_headless_browser(report_dir: Path, tmp_path: Path) -> None:
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no chromium installed; the page is checked for well-formedness instead")
    page = render_report(report_dir)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"]
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    # The FAIL badge's red must be on screen, and the page must be more than a blank canvas.
    assert any(rgb == (0xCF, 0x22, 0x2E) for _, rgb in colours)
    assert len(colours) > 50


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.0002, "1.0002"), (1.0, "1.000"), (0.5, "0.500"), (0.41234, "0.41234"),
     (0.123456789, "0.123457"), (1234.56789, "1234.568"), (1e-5, "1e-05"), (12, "12")],
)  # fmt: skip
def test_numbers_show_the_digits_that_differ(value: float, shown: str) -> None:
    # a Lipschitz constant of 1.0002 read as 1.000 misled a reviewer
    from audit.report.format import fmt_number

    assert fmt_number(value) == shown


def test_weak_evidence_shows_on_the_claim_row(tmp_path: Path) -> None:
    results = make_results()
    clean = results["claims"][0]  # passed, mIoU 0.81 >= 0.75
    clean["num_samples"] = 4
    clean["interval"] = dict(clean["interval"], low=0.70, high=0.88)
    html = render_html(results, report_dir=tmp_path)
    assert "interval from 4 image(s)" in html
    assert "passed on the estimate, but its interval crosses the threshold" in html


def test_strong_evidence_carries_no_warning(tmp_path: Path) -> None:
    html = render_html(make_results(), report_dir=tmp_path)  # 64 images, 0.79 > 0.75
    claims = section_html(html, "claims")
    assert claims and 'class="evidence-warning"' not in claims
    assert "crosses the threshold" not in html

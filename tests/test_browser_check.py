"""The report as a reader opens it: headless Chromium, no console errors, no network
requests, a screenshot, and a paginated A4 PDF with page numbers and the running header
(scripts/browser_check.py, also run by .ci/run)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "browser_check.py"
STYLE = ROOT / "reports" / "templates" / "style.css"
_spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
browser_check = importlib.util.module_from_spec(_spec)
sys.modules["browser_check"] = browser_check
_spec.loader.exec_module(browser_check)

BROWSER = browser_check.find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium here: scripts/browser_setup.sh installs it"
)
needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None,
    reason="no pdftotext here (Debian's poppler-utils): the PDF text checks are not made",
)
HEADER = "SegAudit report: PASS · demo on synthetic"


def _page(folder: Path, body: str, head: str = "") -> Path:
    """A page styled as the report is: the report's own style.css plus ``head``."""
    folder.mkdir()
    (folder / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        f"<style>{STYLE.read_text(encoding='utf-8')}</style>{head}</head>"
        f"<body>{body}</body></html>",
        encoding="utf-8",
    )
    return folder


def _running_header(text: str) -> str:
    return f'<style>@page {{ @top-center {{ content: "{text}" }} }}</style>'


@needs_browser
def test_a_clean_page_passes_and_leaves_a_screenshot_and_a_pdf(tmp_path: Path) -> None:
    page = _page(tmp_path / "clean", "<h1>Audit</h1><p>All claims hold.</p>")
    assert browser_check.check(page, tmp_path / "out", BROWSER) == []
    assert (tmp_path / "out" / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
    pdf = (tmp_path / "out" / "report.pdf").read_bytes()
    assert pdf[:4] == b"%PDF"
    (width, height), *_ = browser_check.pdf_page_sizes(pdf)
    assert abs(width - 595.28) <= 1 and abs(height - 841.89) <= 1


@needs_browser
def test_console_errors_and_network_requests_are_caught(tmp_path: Path) -> None:
    page = _page(
        tmp_path / "leaky",
        "<img src='http://127.0.0.1:9/pixel.png'><script>console.error('boom')</script>",
    )
    problems = browser_check.check(page, tmp_path / "out", BROWSER)
    assert any(p.startswith("network request: http://127.0.0.1:9/pixel.png") for p in problems)
    assert any("console error: boom" in p for p in problems)


@needs_browser
def test_a_page_not_printed_as_paginated_a4_is_caught(tmp_path: Path) -> None:
    folder = tmp_path / "letter"
    folder.mkdir()
    (folder / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        "<style>@page { size: letter; }</style></head><body><p>One page.</p></body></html>"
    )
    problems = browser_check.check(folder, tmp_path / "out", BROWSER, min_pages=2)
    assert "the PDF has 1 page(s), expected at least 2" in problems
    assert any("not A4" in p and "612x792 pt" in p for p in problems)
    if shutil.which("pdftotext"):
        assert any('lack "Page N of 1"' in p for p in problems)


@needs_browser
@needs_pdftotext
def test_page_numbers_and_the_running_header_are_read_from_the_pdf(tmp_path: Path) -> None:
    rows = "".join(f"<tr><td>row {n}</td><td class='num'>{n}</td></tr>" for n in range(150))
    body = f"<h1>Audit</h1><table><thead><tr><th>Row</th><th>n</th></tr></thead>{rows}</table>"
    page = _page(tmp_path / "long", body, _running_header(HEADER))
    assert browser_check.check(page, tmp_path / "out", BROWSER, min_pages=2) == []
    texts = browser_check.pdf_text_pages(tmp_path / "out" / "report.pdf")
    assert len(texts) > 1
    assert all(HEADER in text for text in texts)
    problems = browser_check.check(
        page, tmp_path / "out2", BROWSER, expect_header="Some other audit"
    )
    assert any("lack the running header 'Some other audit'" in p for p in problems)


@needs_browser
def test_without_pdftotext_the_text_checks_say_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = _page(tmp_path / "clean", "<p>All claims hold.</p>")
    real_which = shutil.which
    monkeypatch.setattr(
        browser_check.shutil,
        "which",
        lambda name: None if name == "pdftotext" else real_which(name),
    )
    assert browser_check.check(page, tmp_path / "out", BROWSER) == []
    assert "not checked: page numbers and running header" in capsys.readouterr().err


@needs_browser
def test_a_rendered_report_opens_cleanly(tmp_path: Path, run_audit, pytester, tiny_model) -> None:
    from conftest import TINY_DATA

    run_audit("--audit", str(tiny_model), "--audit-data", TINY_DATA)
    problems = browser_check.check(pytester.path / "audit-report", tmp_path / "out", BROWSER)
    assert problems == []

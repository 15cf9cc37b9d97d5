"""The report as a reader opens it: headless Chromium, no console errors, no network
requests, a screenshot and an A4 PDF (scripts/browser_check.py, also run by .ci/run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "browser_check.py"
_spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
browser_check = importlib.util.module_from_spec(_spec)
sys.modules["browser_check"] = browser_check
_spec.loader.exec_module(browser_check)

BROWSER = browser_check.find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium here: scripts/browser_setup.sh installs it"
)


def _page(folder: Path, body: str) -> Path:
    folder.mkdir()
    (folder / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>t</title></head>"
        f"<body>{body}</body></html>"
    )
    return folder


def test_a_clean_page_passes_and_leaves_a_screenshot_and_a_pdf(tmp_path: Path) -> None:
    page = _page(tmp_path / "clean", "<h1>Audit</h1><p>All claims hold.</p>")
    assert browser_check.check(page, tmp_path / "out", BROWSER) == []
    assert (tmp_path / "out" / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "report.pdf").read_bytes()[:4] == b"%PDF"


def test_console_errors_and_network_requests_are_caught(tmp_path: Path) -> None:
    page = _page(
        tmp_path / "leaky",
        "<img src='http://127.0.0.1:9/pixel.png'><script>console.error('boom')</script>",
    )
    problems = browser_check.check(page, tmp_path / "out", BROWSER)
    assert any(p.startswith("network request: http://127.0.0.1:9/pixel.png") for p in problems)
    assert any("console error: boom" in p for p in problems)


def test_a_rendered_report_opens_cleanly(tmp_path: Path, run_audit, pytester, tiny_model) -> None:
    from conftest import TINY_DATA

    run_audit("--audit", str(tiny_model), "--audit-data", TINY_DATA)
    problems = browser_check.check(pytester.path / "audit-report", tmp_path / "out", BROWSER)
    assert problems == []

"""The report's stylesheet when printed: Ctrl+P (or printToPDF with the page's own size) gives
paginated A4 with page numbers, collapsed <details> expanded, annexes on a new page; prose is
never broken mid-word (reports/templates/style.css, checked in headless Chromium)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STYLE = ROOT / "reports" / "templates" / "style.css"
SCRIPT = ROOT / "scripts" / "browser_check.py"
_spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
browser_check = sys.modules.get("browser_check") or importlib.util.module_from_spec(_spec)
if "browser_check" not in sys.modules:
    sys.modules["browser_check"] = browser_check
    _spec.loader.exec_module(browser_check)

BROWSER = browser_check.find_browser()
needs_print = pytest.mark.skipif(
    BROWSER is None or shutil.which("pdftotext") is None,
    reason="needs Chromium (scripts/browser_setup.sh) and pdftotext (Debian's poppler-utils)",
)
HEADER = "SegAudit report: FAIL · demo-net on synthetic"

ASSESSOR_BLOCKS = """
<h1>demo-net on synthetic</h1>
<p class="warning">Only 8 images: the intervals say little.</p>
<div class="callout">Information for the assessor.</div>
<details class="attack-examples"><summary>Worst examples</summary>
  <p>Collapsed on screen, expanded on paper.</p></details>
<table class="matrix"><thead><tr><th>Requirement</th><th>Claim</th><th>Verdict</th></tr></thead>
<tbody>{rows}</tbody></table>
<section class="annex"><h2>Annex A: evidence manifest</h2>
<table class="manifest"><thead><tr><th>File</th><th>Size</th><th>SHA-256</th></tr></thead>
<tbody><tr><td>attacks/pgd/0-adv.png</td><td class="num">12 kB</td>
<td>a580ec462fa051e61e0efc4d33d70845d41db909e2c426568decfb6cd252fa07</td></tr></tbody></table>
<div class="signoff"><h3>Sign-off</h3><dl>
<div><dt>Reviewer</dt><dd></dd></div><div><dt>Decision</dt><dd></dd></div>
<div><dt>Date</dt><dd></dd></div><div><dt>Signature</dt><dd></dd></div></dl></div>
</section>
"""


def test_no_rule_breaks_words_anywhere() -> None:
    css = STYLE.read_text(encoding="utf-8")
    assert not re.search(r"word-break\s*:\s*break-all", css)
    assert "overflow-wrap: anywhere" in css


def test_the_page_rules_leave_the_running_header_to_the_template() -> None:
    css = STYLE.read_text(encoding="utf-8")
    assert re.search(r"@page\s*\{[^}]*size:\s*A4", css)
    assert "@top-center" not in css
    assert 'counter(page) " of " counter(pages)' in css


@needs_print
def test_assessor_blocks_print_as_paginated_a4(tmp_path: Path) -> None:
    rows = "".join(
        f"<tr><td>REQ-{n:03d}</td><td><code>suite::claim[{n}]</code></td><td>PASS</td></tr>"
        for n in range(90)
    )
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        f"<style>{STYLE.read_text(encoding='utf-8')}</style>"
        f'<style>@page {{ @top-center {{ content: "{HEADER}" }} }}</style></head>'
        f"<body>{ASSESSOR_BLOCKS.format(rows=rows)}</body></html>",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert browser_check.check(folder, out, BROWSER, min_pages=3) == []
    pages = browser_check.pdf_text_pages(out / "report.pdf")
    assert all(HEADER in page for page in pages)
    assert "Collapsed on screen, expanded on paper." in "".join(pages)
    annex = next(n for n, page in enumerate(pages) if "Annex A" in page)
    # The annex opens its page: nothing of the matrix before it there.
    assert "REQ-" not in pages[annex].split("Annex A")[0]
    # The matrix repeats its header row on each page it spans.
    assert sum("Requirement" in page for page in pages[:annex]) == annex
    for label in ("Reviewer", "Decision", "Date", "Signature"):
        assert label in pages[annex] or label in pages[-1]

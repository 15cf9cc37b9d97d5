"""Open a SegAudit report in headless Chromium as a reader would, and check it.

    python scripts/browser_check.py audit-report [--out DIR] [--min-pages N]
        [--expect-header TEXT] [--width PX]

Chromium is driven over the DevTools protocol (a local pipe-free WebSocket on 127.0.0.1):
the report is opened from disk, every network request and console message is collected,
a full-page screenshot is written to ``--out``, and the page is printed to ``report.pdf``
as Ctrl+P would print it (the report's own ``@page`` size and margins, no browser header or
footer).  The check fails (exit 1) on any console error or warning, any request other than
the report's own files, or a PDF that is not paginated A4 with "Page N of M" on each page
and the running header (``--expect-header``, else the report's ``@top-center`` text) on
each page.  The two text checks read the PDF with ``pdftotext`` (Debian's poppler-utils);
without it they are reported as "not checked", never passed.  Exit 3 with a message when no
Chromium is installed (``scripts/browser_setup.sh`` installs Debian's package).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_BROWSER = 3
#: headless, nothing fetched in the background, DevTools on a free loopback port
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--mute-audio", "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)  # fmt: skip


#: A4 in PostScript points, and how far a printed page may be off it
A4 = (595.28, 841.89)
A4_TOLERANCE = 1.0
#: the running header the report sets in its page margin, read back from its CSS
_HEADER_SCRIPT = """(() => {
  for (const sheet of document.styleSheets) {
    for (const rule of sheet.cssRules) {
      if (!(rule instanceof CSSPageRule)) continue;
      for (const margin of rule.cssRules || []) {
        if (margin.name === "top-center" && margin.style.content) return margin.style.content;
      }
    }
  }
  return null;
})()"""


def find_browser() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """The few DevTools calls the check needs, over one page's WebSocket."""

    def __init__(self, url: str) -> None:
        import websocket  # websocket-client, a dev dependency

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.socket.recv()))
        raise TimeoutError(f"no {event} within {timeout} s")


def _page_socket(port: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                pages = [p for p in json.load(response) if p.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("Chromium did not open its DevTools port")


def _port_from(profile: Path) -> int:
    deadline = time.monotonic() + 30
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().splitlines()[0])
        time.sleep(0.1)
    raise TimeoutError("Chromium did not write DevToolsActivePort")


def check(
    report: Path,
    out: Path,
    browser: str,
    *,
    min_pages: int = 1,
    expect_header: str | None = None,
    width: int = 1280,
) -> list[str]:
    """Problems found (empty when the report passes); writes screenshot.png and report.pdf.

    A check that cannot be made here is printed to stderr as "not checked: ...".
    """
    index = (report / "index.html").resolve()
    if not index.is_file():
        return [f"{index} does not exist"]
    out.mkdir(parents=True, exist_ok=True)
    # Chromium's helper processes may still be writing to the profile for a moment after
    # the browser exits: its own session is ended as a group, and a file left in the
    # temporary profile is not an error of the check.
    with tempfile.TemporaryDirectory(
        prefix="segaudit-chromium-", ignore_cleanup_errors=True
    ) as profile:
        process = subprocess.Popen(
            [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            tools = DevTools(_page_socket(_port_from(Path(profile))))
            problems, header = _inspect(tools, index, out, width)
        finally:
            _end_session(process)
    pdf_bytes = (out / "report.pdf").read_bytes()
    return problems + check_pdf(pdf_bytes, out / "report.pdf", min_pages, expect_header or header)


def _end_session(process: subprocess.Popen[bytes]) -> None:
    """Stop the browser and every helper process it started (they share its session)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _inspect(tools: DevTools, index: Path, out: Path, width: int) -> tuple[list[str], str | None]:
    for domain in ("Page", "Network", "Runtime", "Log"):
        tools.call(f"{domain}.enable")
    tools.call("Emulation.setDeviceMetricsOverride", width=width, height=900,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
    tools.call("Page.navigate", url=index.as_uri())
    tools.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # late console messages
    size = tools.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = tools.call(
        "Page.captureScreenshot", format="png", captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": width, "height": min(size["height"], 16000), "scale": 1},
    )  # fmt: skip
    (out / "screenshot.png").write_bytes(base64.b64decode(shot["data"]))
    header = tools.call("Runtime.evaluate", expression=_HEADER_SCRIPT, returnByValue=True)
    header_text = _css_string(header.get("result", {}).get("value"))
    # As Ctrl+P prints it: the report's @page size and margins win; A4 only as a fallback.
    pdf = tools.call("Page.printToPDF", paperWidth=8.27, paperHeight=11.69,
                     preferCSSPageSize=True, printBackground=True,
                     displayHeaderFooter=False)  # fmt: skip
    (out / "report.pdf").write_bytes(base64.b64decode(pdf["data"]))
    problems = []
    own = index.parent.as_uri()
    for event in tools.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not (url.startswith(own) or url.startswith("data:")):
                problems.append(f"network request: {url}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console {params['type']}: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            problems.append(f"console {params['entry']['level']}: {params['entry']['text']}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails'].get('text')}")
    return problems, header_text


def _css_string(value: Any) -> str | None:
    """The text of a serialised CSS ``content`` that is one quoted string, else None."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r'\s*"((?:[^"\\]|\\.)*)"\s*', value)
    return re.sub(r"\\(.)", r"\1", match.group(1)) if match else None


def pdf_page_sizes(pdf: bytes) -> list[tuple[float, float]]:
    """Width and height in points of each page of a PDF as Chromium writes it (one
    uncompressed page dictionary per page, each with its own MediaBox)."""
    sizes = []
    for page in re.finditer(rb"/Type\s*/Page(?![a-zA-Z])(.*?)>>\s*endobj", pdf, re.S):
        box = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)", page[1])
        if box:
            x0, y0, x1, y1 = (float(v) for v in box.groups())
            sizes.append((round(x1 - x0, 2), round(y1 - y0, 2)))
    return sizes


def pdf_text_pages(path: Path) -> list[str] | None:
    """The text of each page (pdftotext), or None when pdftotext is not installed."""
    tool = shutil.which("pdftotext")
    if tool is None:
        return None
    result = subprocess.run(
        [tool, "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True, timeout=120
    )
    pages = result.stdout.decode("utf-8", "replace").split("\f")
    return pages[:-1] if pages and not pages[-1].strip() else pages


def _squash(text: str) -> str:
    return " ".join(text.split())


def check_pdf(pdf: bytes, path: Path, min_pages: int = 1, header: str | None = None) -> list[str]:
    """Problems with the printed report: page size, page count, page numbers, header."""
    problems = []
    sizes = pdf_page_sizes(pdf)
    if len(sizes) < min_pages:
        problems.append(f"the PDF has {len(sizes)} page(s), expected at least {min_pages}")
    off = [n for n, (w, h) in enumerate(sizes, 1)
           if abs(w - A4[0]) > A4_TOLERANCE or abs(h - A4[1]) > A4_TOLERANCE]  # fmt: skip
    if off:
        w, h = sizes[off[0] - 1]
        problems.append(
            f"{len(off)} PDF page(s) are not A4 (595x842 pt): page {off[0]} is {w:g}x{h:g} pt"
        )
    if not sizes:
        return problems
    texts = pdf_text_pages(path)
    if texts is None:
        note("page numbers and running header: pdftotext is not installed (Debian's poppler-utils)")
        return problems
    total = len(texts)
    unnumbered = [
        n for n, text in enumerate(texts, 1) if f"Page {n} of {total}" not in _squash(text)
    ]
    if unnumbered:
        problems.append(
            f'{len(unnumbered)} of {total} PDF page(s) lack "Page N of {total}": '
            f"page {unnumbered[0]} is the first"
        )
    if header is None:
        note("running header: the report sets none (@top-center) and --expect-header is not given")
    else:
        missing = [n for n, text in enumerate(texts, 1) if _squash(header) not in _squash(text)]
        if missing:
            problems.append(
                f"{len(missing)} of {total} PDF page(s) lack the running header {header!r}: "
                f"page {missing[0]} is the first"
            )
    return problems


def note(message: str) -> None:
    print(f"browser check: not checked: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report folder (holds index.html)")
    parser.add_argument("--out", type=Path, default=Path("browser-check"))
    parser.add_argument(
        "--min-pages",
        type=int,
        default=1,
        help="fail when the printed PDF has fewer pages (default 1)",
    )
    parser.add_argument(
        "--expect-header",
        metavar="TEXT",
        help="running header each printed page must carry "
        "(default: the report's own @top-center text, if any)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=1280,
        help="viewport width in CSS pixels for the screenshot (default 1280)",
    )
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(
            "browser check skipped: no Chromium here (scripts/browser_setup.sh installs "
            "Debian's chromium package)",
            file=sys.stderr,
        )
        return NO_BROWSER
    problems = check(args.report, args.out, browser, min_pages=args.min_pages,
                     expect_header=args.expect_header, width=args.width)  # fmt: skip
    for problem in problems:
        print(f"browser check: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"browser check: {args.report / 'index.html'} opens cleanly; screenshot and PDF in "
          f"{args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

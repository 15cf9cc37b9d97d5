"""Open a SegAudit report in headless Chromium as a reader would, and check it.

    python scripts/browser_check.py audit-report [--out DIR]

Chromium is driven over the DevTools protocol (a local pipe-free WebSocket on 127.0.0.1):
the report is opened from disk, every network request and console message is collected,
a full-page screenshot and an A4 PDF are written to ``--out``.  The check fails (exit 1)
on any console error or warning, any request other than the report's own files, or a PDF
without pages.  Exit 3 with a message when no Chromium is installed
(``scripts/browser_setup.sh`` installs Debian's package).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
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


def check(report: Path, out: Path, browser: str) -> list[str]:
    """Problems found (empty when the report passes); writes screenshot.png and report.pdf."""
    index = (report / "index.html").resolve()
    if not index.is_file():
        return [f"{index} does not exist"]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segaudit-chromium-") as profile:
        process = subprocess.Popen(
            [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            tools = DevTools(_page_socket(_port_from(Path(profile))))
            return _inspect(tools, index, out)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _inspect(tools: DevTools, index: Path, out: Path) -> list[str]:
    for domain in ("Page", "Network", "Runtime", "Log"):
        tools.call(f"{domain}.enable")
    tools.call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
    tools.call("Page.navigate", url=index.as_uri())
    tools.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # late console messages
    size = tools.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = tools.call(
        "Page.captureScreenshot", format="png", captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 16000), "scale": 1},
    )  # fmt: skip
    (out / "screenshot.png").write_bytes(base64.b64decode(shot["data"]))
    pdf = tools.call("Page.printToPDF", paperWidth=8.27, paperHeight=11.69,
                     printBackground=True, displayHeaderFooter=False)  # fmt: skip
    pdf_bytes = base64.b64decode(pdf["data"])
    (out / "report.pdf").write_bytes(pdf_bytes)
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
    if pdf_bytes.count(b"/Type /Page") - pdf_bytes.count(b"/Type /Pages") < 1:
        problems.append("the PDF has no pages")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report folder (holds index.html)")
    parser.add_argument("--out", type=Path, default=Path("browser-check"))
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(
            "browser check skipped: no Chromium here (scripts/browser_setup.sh installs "
            "Debian's chromium package)",
            file=sys.stderr,
        )
        return NO_BROWSER
    problems = check(args.report, args.out, browser)
    for problem in problems:
        print(f"browser check: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"browser check: {args.report / 'index.html'} opens cleanly; screenshot and PDF in "
          f"{args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

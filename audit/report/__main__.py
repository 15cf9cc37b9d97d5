"""``python -m audit.report REPORT_DIR``: re-render ``index.html`` from ``results.json``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from audit.errors import SegAuditError
from audit.report.render import render_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit.report",
        description="Re-render REPORT_DIR/index.html from REPORT_DIR/results.json.",
    )
    parser.add_argument("report_dir", metavar="REPORT_DIR", type=Path)
    args = parser.parse_args(argv)
    try:
        path = render_report(args.report_dir)
    except SegAuditError as exc:
        print(f"segaudit: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

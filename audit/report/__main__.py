"""``python -m audit.report REPORT_DIR``: re-render ``index.html`` from ``results.json``,
once the record has passed its JSON Schema (audit/schemas/results.schema.json)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from audit.errors import SegAuditError
from audit.report.render import RESULTS_FILE, load_results, render_report
from audit.schema import validate_record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit.report",
        description="Re-render REPORT_DIR/index.html from REPORT_DIR/results.json.",
    )
    parser.add_argument("report_dir", metavar="REPORT_DIR", type=Path)
    args = parser.parse_args(argv)
    try:
        results = load_results(args.report_dir)
        # The run renders whatever it wrote; a record handed in from elsewhere must first
        # be one that the report and every other reader can rely on.
        validate_record(results, source=str(args.report_dir / RESULTS_FILE))
        path = render_report(args.report_dir, results=results)
    except SegAuditError as exc:
        print(f"segaudit: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

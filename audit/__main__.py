"""``python -m audit compare OLD NEW``: two audit records side by side, for CI gates.

Torch-free: it reads two ``results.json`` files (or report folders holding them), prints a
table of every claim (old value, new value, delta, status), the evaluations that changed and
the inputs that differ, and exits 0, 1 when ``--fail-on-regression`` is given and something
regressed, or 4 on bad input (a missing or malformed file, a bad option), as pytest does for
a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from audit.errors import SegAuditError
from audit.record.baseline import DEFAULT_TOLERANCE, REGRESSED, compare_records, load_baseline
from audit.record.baseline_table import comparison_table

#: exit statuses, as pytest's: regressions found (with --fail-on-regression), bad input
EXIT_REGRESSED = 1
EXIT_USAGE = 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m audit", description="SegAudit command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    compare = commands.add_parser(
        "compare",
        help="compare an audit record with a baseline record",
        description="Compare NEW with OLD: each claim and evaluation improved, regressed, "
        "unchanged, new or removed, and which inputs (model, data, suites, versions) changed.",
    )
    compare.add_argument("old", metavar="OLD", help="the baseline: results.json or report folder")
    compare.add_argument("new", metavar="NEW", help="the run to judge: results.json or folder")
    compare.add_argument(
        "--tolerance",
        type=_tolerance,
        default=DEFAULT_TOLERANCE,
        metavar="T",
        help=f"absolute change that still counts as unchanged, for claims without their own "
        f"'tolerance' key (default {DEFAULT_TOLERANCE:g})",
    )
    compare.add_argument(
        "--fail-on-regression",
        action="store_true",
        help=f"exit {EXIT_REGRESSED} when a claim or evaluation regressed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        old = load_baseline(args.old)
        new = load_baseline(args.new, what="record")
    except SegAuditError as exc:
        print(f"python -m audit compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    comparison = compare_records(old, new.record, tolerance=args.tolerance)
    print("\n".join(comparison_table(comparison)))
    regressed = any(
        row["status"] == REGRESSED for row in [*comparison["claims"], *comparison["evaluations"]]
    )
    return EXIT_REGRESSED if args.fail_on_regression and regressed else 0


if __name__ == "__main__":
    raise SystemExit(main())

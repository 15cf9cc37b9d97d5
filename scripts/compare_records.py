"""Compare two audit records (``results.json``) apart from what differs run to run.

    python scripts/compare_records.py BEFORE/results.json AFTER/results.json

Timestamps, durations, timings, the host, the command line and absolute file paths (keys
``path`` and ``source``) are dropped;
everything else (verdicts, measured values, intervals, evidence, evaluations, diagnostics,
provenance) must be equal.  Prints the differing paths and exits 1 if there are any.  Used
to show that a refactoring leaves what an audit reports unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: keys whose values change from run to run (or machine to machine) by nature
VOLATILE = frozenset(
    {
        "started_at",
        "finished_at",
        "updated_at",
        "duration_s",
        "seconds",
        "hostname",
        "command_line",
        # absolute file paths (model, suites): the same files in two checkouts
        "path",
        "source",
        # a threshold's origin: the suite file's absolute path, or the option that set it
        "where",
    }
)


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def differences(a: Any, b: Any, where: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}/{key}: only in {'after' if key in b else 'before'}"
            else:
                yield from differences(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} items before, {len(b)} after"
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            yield from differences(x, y, f"{where}[{i}]")
    elif a != b:
        yield f"{where}: {a!r} before, {b!r} after"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before = normalise(json.loads(args.before.read_text()))
    after = normalise(json.loads(args.after.read_text()))
    found = list(differences(before, after))
    for line in found:
        print(line)
    print(f"{len(found)} difference(s) between {args.before} and {args.after}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

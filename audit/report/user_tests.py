"""The report's "Your own tests" section: the tests that used the audit's fixtures, with their
outcome and, for a Hypothesis test that failed, the shrunk falsifying example it reported,
from ``results["user_tests"]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import as_list
from audit.report.format import fmt_duration

_OUTCOME_CSS = {"passed": "pass", "failed": "fail", "error": "error", "skipped": "skip"}


def build_user_tests(results: Mapping[str, Any]) -> dict[str, Any] | None:
    tests = [t for t in as_list(results.get("user_tests")) if isinstance(t, Mapping)]
    if not tests:
        return None
    rows = [
        {
            "nodeid": str(t.get("nodeid")),
            "outcome": str(t.get("outcome")),
            "css": _OUTCOME_CSS.get(str(t.get("outcome")), "error"),
            "kind": "Hypothesis" if t.get("hypothesis") else "plain",
            "duration": fmt_duration(t.get("duration_s")),
            "message": str(t.get("message") or ""),
            "falsifying": t.get("falsifying_example"),
        }
        for t in tests
    ]
    failed = sum(r["outcome"] in ("failed", "error") for r in rows)
    return {"rows": rows, "count": len(rows), "failed": failed}

"""The user's own tests in the record: those that use the audit's fixtures, with their outcome
and the falsifying example Hypothesis reported, so the report shows them beside the claims."""

from __future__ import annotations

from typing import Any

#: a test that asks for one of these fixtures is recorded
AUDIT_FIXTURES = ("audit_session", "audit_engine")


def user_test_entry(item: Any, call: Any, report: Any) -> dict[str, Any] | None:
    """The record's entry of a user's test phase: its outcome, the first line of its failure
    and the falsifying example Hypothesis reported (its notes on the exception); ``None``
    for a setup or teardown that passed (the call phase says it)."""
    if report.when != "call" and report.passed:
        return None
    outcome = report.outcome
    if report.when != "call" and report.failed:
        outcome = "error"
    error = call.excinfo.value if call.excinfo is not None else None
    notes = [str(n) for n in getattr(error, "__notes__", ()) if isinstance(n, str)]
    # "Falsifying example: ..." in older Hypothesis, "Failing test case: ..." in newer
    falsifying = [n for n in notes if n.startswith(("Falsifying", "Failing test case"))]
    message = ""
    if error is not None:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
    return {
        "nodeid": item.nodeid,
        "outcome": outcome,
        "when": report.when,
        "duration_s": round(report.duration, 4),
        "hypothesis": bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False)),
        "message": message,
        "falsifying_example": "\n".join(falsifying) or None,
        "fixtures": [n for n in getattr(item, "fixturenames", ()) if n in AUDIT_FIXTURES],
    }

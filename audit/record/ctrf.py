"""The audit record as a CTRF report (Common Test Report Format, https://ctrf.io).

CI dashboards that read CTRF show one test per claim item, with the claim's verdict as its
status; what a robustness claim adds (the measured value, its interval, the threshold, the
verdict's wording) goes under each test's ``extra``, the format's one extension point, keyed
``segaudit.claim``.  Built from the record alone, so that an interrupted run's CTRF report
says what its record says: claims that did not run are ``other`` with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.record.writer import now_iso, write_json_atomic

#: the CTRF specification version the report follows (its ``specVersion``)
CTRF_SPEC_VERSION = "0.0.0"
#: the namespace of SegAudit's keys in ``extra`` objects (CTRF asks producers for one)
NAMESPACE = "segaudit"
#: claim verdict -> CTRF status; a claim that could not be measured fails the gate as a
#: failure does (CTRF has no "error"), and ``rawStatus`` keeps the verdict
STATUS = {
    "passed": "passed",
    "failed": "failed",
    "error": "failed",
    "skipped": "skipped",
    "not_run": "other",
}
#: claim entry keys copied under each test's ``extra`` (the rest is in results.json)
_CLAIM_KEYS = (
    "id",
    "statement",
    "kind",
    "metric",
    "params",
    "statistic",
    "threshold",
    "measured",
    "compared",
    "interval",
    "verdict",
    "num_samples",
    "condition",
    "quantity",
    "unproven",
)


def ctrf_report(record: Mapping[str, Any]) -> dict[str, Any]:
    """The CTRF document of ``record`` (a ``results.json`` mapping)."""
    provenance = record.get("provenance") or {}
    tests = [_test(claim) for claim in record.get("claims", [])]
    counts = Counter(test["status"] for test in tests)
    start = _epoch_ms(provenance.get("started_at"))
    duration = round(float(provenance.get("duration_s") or 0.0) * 1000)
    version = (provenance.get("versions") or {}).get("segaudit")
    tool: dict[str, Any] = {"name": "pytest-segaudit"}
    if version:
        tool["version"] = str(version)
    results: dict[str, Any] = {
        "tool": tool,
        "summary": {
            "tests": len(tests),
            **{status: counts.get(status, 0) for status in _CTRF_STATUSES},
            "suites": len(record.get("suites", [])),
            "start": start,
            "stop": start + duration,
            "duration": duration,
        },
        "tests": tests,
        "environment": _environment(record),
        "extra": {f"{NAMESPACE}.run": _run(record)},
    }
    return {
        "reportFormat": "CTRF",
        "specVersion": CTRF_SPEC_VERSION,
        "timestamp": now_iso(),
        "generatedBy": "pytest-segaudit" + (f" {version}" if version else ""),
        "results": results,
    }


def write_ctrf(path: Path, record: Mapping[str, Any]) -> Path:
    """Write the CTRF document of ``record`` to ``path`` (atomically, as the record)."""
    write_json_atomic(path, ctrf_report(record))
    return path


_CTRF_STATUSES = ("passed", "failed", "skipped", "pending", "other")


def _test(claim: Mapping[str, Any]) -> dict[str, Any]:
    verdict = str(claim.get("verdict", "not_run"))
    test: dict[str, Any] = {
        "name": str(claim.get("nodeid")),
        "testId": str(claim.get("nodeid")),
        "status": STATUS.get(verdict, "other"),
        "rawStatus": verdict,
        "duration": round(float(claim.get("duration_s") or 0.0) * 1000),
        "suite": [str(claim.get("suite"))],
        "tags": [str(claim.get("kind"))],
        "extra": {f"{NAMESPACE}.claim": {k: claim.get(k) for k in _CLAIM_KEYS}},
    }
    if claim.get("message"):
        test["message"] = str(claim["message"])
    elif verdict == "not_run":
        test["message"] = "not run: the audit stopped before this claim"
    if claim.get("source"):
        test["filePath"] = str(claim["source"])
    return test


def _environment(record: Mapping[str, Any]) -> dict[str, Any]:
    provenance = record.get("provenance") or {}
    names = [str(s.get("name")) for s in record.get("suites", [])]
    environment: dict[str, Any] = {"reportName": f"SegAudit: {', '.join(names) or 'no suite'}"}
    model = provenance.get("model") or {}
    name = (model.get("metadata") or {}).get("name") or (
        Path(model["path"]).name if model.get("path") else None
    )
    if name:
        environment["appName"] = str(name)
    environment["healthy"] = record.get("status") == "passed"
    return environment


def _run(record: Mapping[str, Any]) -> dict[str, Any]:
    """The run's own outcome, which CTRF's counts cannot say (an error outside any claim,
    a run that did not finish)."""
    provenance = record.get("provenance") or {}
    model = provenance.get("model") or {}
    dataset = provenance.get("dataset") or {}
    return {
        "status": record.get("status"),
        "complete": record.get("complete"),
        "reason": record.get("reason"),
        "verdicts": record.get("summary"),
        "errors": record.get("errors", []),
        "model": {"path": model.get("path"), "sha256": model.get("sha256")},
        "dataset": {"spec": dataset.get("spec"), "fingerprint": dataset.get("fingerprint")},
        "seed": provenance.get("seed"),
        "schema_version": record.get("schema_version"),
    }


def _epoch_ms(stamp: Any) -> int:
    """An ISO 8601 time as milliseconds since the epoch (now, when it cannot be read)."""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        moment = datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)

"""The audit record: every claim's outcome plus provenance, written as ``results.json``.

The record is built while the run goes on and written atomically after every change of
state that matters, so an interrupted or crashed run still leaves a valid, partial file
(``"complete": false``).  The HTML report is rendered from this file alone.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
VERDICTS = ("passed", "failed", "error", "skipped", "not_run")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and ``os.replace``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False, default=_jsonable)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a missing or undefined number is ``null``."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


class RunRecorder:
    """Accumulates claims, evaluations and provenance of one audit run."""

    def __init__(self, *, provenance: Mapping[str, Any] | None = None) -> None:
        self.started_monotonic = time.monotonic()
        self.provenance: dict[str, Any] = {"started_at": now_iso(), **(provenance or {})}
        self.suites: list[dict[str, Any]] = []
        self.claims: dict[str, dict[str, Any]] = {}
        self.evaluations: dict[str, Any] = {}
        #: findings that question the strength of the evaluation (audit.diagnostics)
        self.diagnostics: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.finished = False

    def add_suite(self, suite: Mapping[str, Any]) -> None:
        if all(s["path"] != suite["path"] for s in self.suites):
            self.suites.append(dict(suite))

    def register_claim(self, spec: Any) -> None:
        """Announce a claim that is meant to run; until it does its verdict is ``not_run``."""
        self.claims.setdefault(
            spec.nodeid,
            {
                "nodeid": spec.nodeid,
                "suite": spec.suite,
                "id": spec.id,
                "statement": spec.statement,
                "kind": spec.kind,
                "metric": spec.params.get("metric"),
                # keys starting with "_" are the kind's bookkeeping, not the claim's terms
                "params": {k: v for k, v in spec.params.items() if not k.startswith("_")},
                "statistic": spec.statistic,
                "threshold": spec.threshold.to_dict(),
                "source": spec.source,
                "measured": None,
                "compared": None,
                "interval": None,
                "verdict": "not_run",
                "message": "",
                "duration_s": None,
                "num_samples": None,
                "evidence": {},
            },
        )

    def record_claim(self, nodeid: str, **fields: Any) -> dict[str, Any]:
        entry = self.claims[nodeid]
        verdict = fields.get("verdict")
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        entry.update(fields)
        return entry

    def record_error(self, where: str, message: str) -> None:
        """An error outside any claim (a malformed suite, a model that does not load)."""
        self.errors.append({"where": where, "message": message})

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for entry in self.claims.values():
            counts[entry["verdict"]] += 1
        return {"total": len(self.claims), "error": counts.pop("error"), **counts}

    def status(self, complete: bool) -> str:
        s = self.summary()
        if s["error"] or self.errors:
            return "error"
        if s["failed"]:
            return "failed"
        if not complete:
            return "incomplete"
        return "passed"

    def to_dict(self, *, complete: bool) -> dict[str, Any]:
        provenance = dict(self.provenance)
        if self.finished:
            provenance.setdefault("finished_at", now_iso())
        provenance["duration_s"] = round(time.monotonic() - self.started_monotonic, 3)
        return {
            "schema_version": SCHEMA_VERSION,
            "complete": complete,
            "status": self.status(complete),
            "summary": self.summary(),
            "provenance": provenance,
            "suites": self.suites,
            "errors": self.errors,
            "claims": list(self.claims.values()),
            "evaluations": self.evaluations,
            "diagnostics": self.diagnostics,
        }

    def write(self, report_dir: Path, *, complete: bool) -> Path:
        path = report_dir / "results.json"
        write_json_atomic(path, self.to_dict(complete=complete))
        return path

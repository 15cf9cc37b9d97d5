"""The audit record: every claim's outcome plus provenance, written as ``results.json``.

The record is built while the run goes on and written atomically after every change of
state that matters: once the claims are collected (``"status": "running"``), when a claim
starts and ends, and every few seconds while an evaluation runs.  So even a run killed
outright (SIGKILL, a CI hard timeout) leaves a valid, partial file (``"complete": false``)
saying how far it got.  The HTML report is rendered from this file alone.
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

from audit.errors import SegAuditError
from audit.files import write_text_atomic

SCHEMA_VERSION = 1
VERDICTS = ("passed", "failed", "error", "skipped", "not_run")
#: the record's status while the run has not finished; a record left with it was written
#: by a process that never reached its end (killed, or still running)
RUNNING = "running"


#: where a run of some claims only writes when the report folder holds a complete record
PARTIAL_DIR = "partial"


def complete_record_in(folder: Path) -> bool:
    """Whether ``folder/results.json`` is the record of a complete run."""
    try:
        record = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("complete") is True


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and ``os.replace``: readers never see half a file."""
    # Serialised first: a value JSON cannot hold (NaN) fails before any file is touched.
    text = json.dumps(data, indent=2, allow_nan=False, default=_jsonable) + "\n"
    write_text_atomic(path, text)


def ensure_writable_dir(path: Path, *, what: str = "report folder") -> None:
    """Create ``path`` if needed and prove a file can be written there (a probe, removed).

    Checked before any work starts: a report folder that turns out to be a file, to lie
    under a file or to be read-only must not cost the first claim's computation.
    """
    if path.exists() and not path.is_dir():
        raise SegAuditError(f"{what} {path} is a file, not a folder; name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".segaudit-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise SegAuditError(
                f"{what} {path} cannot be created: {blocker} is a file, not a folder"
            ) from None
        raise SegAuditError(
            f"{what} {path} is not writable ({exc.strerror or exc}); name a folder this "
            "user can write to"
        ) from None


def ensure_writable_file(path: Path, *, what: str) -> None:
    """Refuse, before any work, a file path that names a folder or lies where nothing can
    be written (its folder is created, as the report folder is)."""
    if path.is_dir():
        raise SegAuditError(f"{what} {path} is a folder; name a file")
    ensure_writable_dir(path.parent, what=f"{what} folder")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunRecorder:
    """Accumulates claims, evaluations and provenance of one audit run."""

    def __init__(self, *, provenance: Mapping[str, Any] | None = None) -> None:
        self.started_monotonic = time.monotonic()
        self.provenance: dict[str, Any] = {
            "started_at": now_iso(),
            "finished_at": None,
            **(provenance or {}),
        }
        self.suites: list[dict[str, Any]] = []
        self.claims: dict[str, dict[str, Any]] = {}
        self.evaluations: dict[str, Any] = {}
        #: findings that question the strength of the evaluation (audit.record.diagnostics)
        self.diagnostics: list[dict[str, Any]] = []
        #: the checks behind ``diagnostics``, name -> what it expects (the report lists them)
        self.diagnostic_checks: dict[str, str] = {}
        #: per check: flagged, clear or not applicable (and why); empty until the attacks
        #: are summarised, so a run stopped before then claims nothing about them
        self.diagnostic_coverage: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, str]] = []
        #: the claim and the evaluation in progress (claims done are counted when written)
        self.progress: dict[str, Any] = {}
        #: what stopped the run early ("SIGTERM", "SIGINT", "--exitfirst", ...), if anything
        self.interrupted_by: str | None = None
        self.finished = False
        #: this run against a baseline run (audit.record.baseline), when one is given
        self.baseline: dict[str, Any] | None = None
        #: the user's own tests that used the audit's fixtures, with their outcomes and any
        #: falsifying example Hypothesis reported, by node id
        self.user_tests: dict[str, dict[str, Any]] = {}
        #: the evaluation cache across runs (``--audit-cache``): its folder, the evaluations
        #: reused from it and computed, and entries that could not be used; None: no cache
        self.cache: dict[str, Any] | None = None

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
                # suite, built-in placeholder, kind default or override; and why it is set so
                "threshold_source": dict(spec.threshold_source),
                "rationale": spec.rationale,
                # the claim's own wall-clock budget (None: the claim_timeout setting's, if any)
                "timeout": spec.timeout,
                # how far the value may move against a baseline run (None: the default)
                "tolerance": spec.tolerance,
                # whether a value resting on something unproven fails the claim, and what
                # the measured value rests on that is not proven (set once measured)
                "require_proof": spec.require_proof,
                "unproven": None,
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

    def record_user_test(self, entry: Mapping[str, Any]) -> None:
        """A user's test's outcome; a later phase of the same test (call after setup)
        replaces what an earlier one said, a failure in teardown is kept."""
        previous = self.user_tests.get(entry["nodeid"])
        if (
            previous is not None
            and previous["outcome"] != "passed"
            and entry["outcome"] == "passed"
        ):
            return
        self.user_tests[entry["nodeid"]] = dict(entry)

    def order_claims(self, nodeids: list[str]) -> None:
        """Put the claims in ``nodeids``' order (an xdist controller receives them in the
        order workers finish them); claims not listed keep their order, last."""
        position = {nodeid: index for index, nodeid in enumerate(nodeids)}
        ordered = sorted(self.claims.items(), key=lambda item: position.get(item[0], len(position)))
        self.claims = dict(ordered)

    def record_error(self, where: str, message: str) -> None:
        """An error outside any claim (a malformed suite, a model that does not load)."""
        self.errors.append({"where": where, "message": message})

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for entry in self.claims.values():
            counts[entry["verdict"]] += 1
        return {"total": len(self.claims), "error": counts.pop("error"), **counts}

    def status(self, complete: bool) -> str:
        # A claim the model broke is the headline even when others could not run: a
        # reader skimming "ERROR" would take it for a broken setup, not a broken model.
        s = self.summary()
        if s["failed"]:
            return "failed"
        if s["error"] or self.errors:
            return "error"
        if not complete:
            return "incomplete"
        return "passed"

    def to_dict(self, *, complete: bool) -> dict[str, Any]:
        provenance = dict(self.provenance)
        if self.finished and not provenance.get("finished_at"):
            provenance["finished_at"] = now_iso()
        provenance["duration_s"] = round(time.monotonic() - self.started_monotonic, 3)
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "complete": complete,
            "status": self.status(complete) if self.finished else RUNNING,
            "summary": self.summary(),
            "progress": {
                "claims_done": sum(1 for c in self.claims.values() if c["verdict"] != "not_run"),
                "claims_total": len(self.claims),
                **self.progress,
                "updated_at": now_iso(),
            },
        }
        if self.interrupted_by is not None:
            # read by the report's banner, which lists why a run is incomplete
            record["reason"] = f"the run was stopped early by {self.interrupted_by}"
        return {
            **record,
            "provenance": provenance,
            "suites": self.suites,
            "errors": self.errors,
            "claims": list(self.claims.values()),
            "evaluations": self.evaluations,
            "diagnostics": self.diagnostics,
            "diagnostic_checks": self.diagnostic_checks,
            "diagnostic_coverage": self.diagnostic_coverage,
            **({"baseline": self.baseline} if self.baseline is not None else {}),
            **({"user_tests": list(self.user_tests.values())} if self.user_tests else {}),
            **({"cache": self.cache} if self.cache else {}),
        }

    def write(self, report_dir: Path, *, complete: bool) -> Path:
        path = report_dir / "results.json"
        write_json_atomic(path, self.to_dict(complete=complete))
        return path

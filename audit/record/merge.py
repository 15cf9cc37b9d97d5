"""The evaluations of pytest-xdist workers, merged into the controller's record.

Under ``pytest -n N`` each worker builds its own engine and computes the evaluations of the
claims it ran; the controller, which writes the record, never builds one.  At its end each
worker summarises its evaluations exactly as a serial run would (:func:`audit.record.entries.
summarise`: entries, example images in the shared report folder, noise baselines) and hands
them over (:func:`worker_summary` in the session, through xdist's ``workeroutput``); the
controller folds them in here.  An evaluation two workers both computed (the clean one, an
attack grid two claims share) is kept once: the same key gives the same entry, whichever
worker computed it.  What is derived from several evaluations (the gradient-masking
diagnostics, the corruption summary) is derived again from the merged whole.

Lists are kept sorted by their entries' ids, so the merged record does not depend on which
worker finished first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from audit.record.corruption_entries import corruption_summary
from audit.record.diagnostics import CHECKS, attack_diagnostics, diagnostic_coverage
from audit.record.writer import RunRecorder

#: provenance a worker learns by loading the model and data, which the controller never does
WORKER_PROVENANCE = ("device", "model", "dataset", "palette")
#: evaluations derived from others: recomputed from the merged entries, not merged
_DERIVED = frozenset({"corruption_summary"})


def _identity(entry: Any) -> str:
    if isinstance(entry, Mapping):
        for key in ("id", "claim"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return json.dumps(entry, sort_keys=True, default=str)


def merge_worker(recorder: RunRecorder, summary: Mapping[str, Any]) -> None:
    """Fold one worker's summary into ``recorder`` (the controller's)."""
    for suite in summary.get("suites") or []:
        recorder.add_suite(suite)
    for key in WORKER_PROVENANCE:
        value = summary.get("provenance", {}).get(key)
        if value is not None:
            recorder.provenance.setdefault(key, value)
    for row in summary.get("provenance", {}).get("memory_retries") or []:
        rows = recorder.provenance.setdefault("memory_retries", [])
        if row not in rows:
            rows.append(row)
    for key, value in (summary.get("evaluations") or {}).items():
        if key in _DERIVED:
            continue
        if isinstance(value, list):
            merged = recorder.evaluations.setdefault(key, [])
            known = {_identity(entry) for entry in merged}
            merged.extend(entry for entry in value if _identity(entry) not in known)
            merged.sort(key=_identity)
        else:
            recorder.evaluations.setdefault(key, value)
    cache = summary.get("cache")
    if cache:
        # each worker reused and computed its own evaluations: the run's are their union
        merged = recorder.cache or {"dir": cache.get("dir"), "reused": [], "computed": [],
                                    "warnings": []}  # fmt: skip
        for key in ("reused", "computed", "warnings"):
            merged[key].extend(x for x in cache.get(key) or [] if x not in merged[key])
        recorder.cache = merged
    for error in summary.get("errors") or []:
        if error not in recorder.errors:
            recorder.errors.append(error)


def finish_merge(recorder: RunRecorder) -> None:
    """Derive again, from the merged evaluations, what is derived from several of them."""
    attacks = recorder.evaluations.get("attacks") or []
    recorder.diagnostics = attack_diagnostics(attacks)
    recorder.diagnostic_checks = dict(CHECKS)
    recorder.diagnostic_coverage = diagnostic_coverage(attacks, recorder.diagnostics)
    corruptions = recorder.evaluations.get("corruptions")
    if corruptions:
        clean = recorder.evaluations.get("clean") or {}
        clean_miou = (clean.get("metrics") or {}).get("miou")
        recorder.evaluations["corruption_summary"] = corruption_summary(corruptions, clean_miou)

"""The report's closing sections: "Conclusion and sign-off", and the annexes "Reproduction"
(the exact recipe and the suite files as run) and "Evidence manifest".

The evidence manifest (``manifest.sha256``, written with the record) is the one hash a
reviewer signs: it lists the SHA-256 of the record, of each suite file as run and of every
evidence file, and each listed file is checked again when the page is rendered.  The renderer
hands these builders the manifest and the suite texts under the keys ``manifest`` and
``suite_texts`` (see :mod:`audit.report.sections`); the record itself never holds them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from audit.files import MANIFEST_FILE
from audit.report.accessors import COUNT_LABELS, counts, mapping, status, suites
from audit.report.format import MISSING, fmt_any

_STATUS_TEXT = {
    "ok": "matches",
    "changed": "CHANGED since the run",
    "missing": "MISSING",
    "malformed": "malformed line",
}


def manifest_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's own hash and whether every listed file still matches it."""
    manifest = mapping(results.get("manifest"))
    if not manifest:
        return {
            "present": False,
            "sha256": MISSING,
            "record_sha256": MISSING,
            "verified": False,
            "problems": 0,
            "file": MANIFEST_FILE,
        }
    entries = [mapping(e) for e in manifest.get("entries") or []]
    problems = sum(1 for e in entries if e.get("status") != "ok")
    record = next((e for e in entries if e.get("name") == "results.json"), {})
    return {
        "present": True,
        "sha256": fmt_any(manifest.get("sha256")),
        "record_sha256": fmt_any(record.get("sha256")),
        "verified": problems == 0,
        "problems": problems,
        "file": fmt_any(manifest.get("file")),
        "count": len(entries),
    }


def headline(results: Mapping[str, Any]) -> str:
    """The verdict in one sentence: failures lead, then what the counts mean."""
    totals = counts(results)
    label, _ = status(results)
    parts = [f"{totals[key]} {text.lower()}" for key, text in COUNT_LABELS[1:] if totals[key]]
    breakdown = ", ".join(parts) if parts else "no claims"
    meaning = {
        "FAIL": "The model broke at least one claim; the failures are listed under Incidents.",
        "ERROR": "Some claims could not be decided; no claim was broken, but none of the "
        "undecided ones may be read as a pass.",
        "PASS": "Every claim held under the conditions tested; the residual-risk section "
        "says what that does not cover.",
    }.get(label, "The run did not complete; a missing failure is not a pass.")
    return f"{label}: {totals['total']} claim(s), {breakdown}. {meaning}"


def build_conclusion(results: Mapping[str, Any]) -> dict[str, Any]:
    label, css = status(results)
    return {
        "badge": label,
        "badge_css": css,
        "headline": headline(results),
        "manifest": manifest_summary(results),
        "decisions": ("accepted", "accepted with conditions", "rejected"),
    }


def _recipe(results: Mapping[str, Any]) -> list[dict[str, str]]:
    provenance = mapping(results.get("provenance"))
    model = mapping(provenance.get("model"))
    dataset = mapping(provenance.get("dataset"))
    env = mapping(provenance.get("environment"))
    source = mapping(env.get("segaudit_source"))
    version = fmt_any(mapping(provenance.get("versions")).get("segaudit"))
    install = f"pip install 'pytest-segaudit=={version}'"
    if source.get("commit"):
        install = f"git checkout {source['commit']} && make setup"
    command = provenance.get("command_line")
    if isinstance(command, list) and all(isinstance(part, str) for part in command):
        command_text = shlex.join(command)
    else:
        command_text = fmt_any(command)
    steps = [
        ("Install the same SegAudit", install),
        (
            "Check the model file",
            f"sha256sum {shlex.quote(fmt_any(model.get('path')))}  "
            f"# expect {fmt_any(model.get('sha256'))}",
        ),
        (
            "Use the same data",
            f"{fmt_any(dataset.get('spec'))}  # fingerprint "
            f"{fmt_any(dataset.get('fingerprint'))}, {fmt_any(dataset.get('num_samples'))} images",
        ),
        (
            "Run the same command (seed, device and suites are in it or in the settings below)",
            command_text,
        ),
        ("Check the evidence bundle in the report folder", f"sha256sum -c {MANIFEST_FILE}"),
    ]
    return [{"what": what, "command": text} for what, text in steps]


def build_reproduction(results: Mapping[str, Any]) -> dict[str, Any]:
    provenance = mapping(results.get("provenance"))
    texts = mapping(results.get("suite_texts"))
    suite_files = []
    for suite in suites(results):
        copy = suite.get("copy")
        suite_files.append(
            {
                "name": fmt_any(suite.get("name")),
                "file": fmt_any(copy),
                "sha256": fmt_any(suite.get("sha256")),
                "text": texts.get(copy) if isinstance(copy, str) else None,
            }
        )
    settings = [
        ("Seed", fmt_any(provenance.get("seed"))),
        ("Device requested", fmt_any(provenance.get("device_requested"))),
        ("Batch size", fmt_any(provenance.get("batch_size"))),
        (
            "Sample limit",
            "none" if provenance.get("limit") is None else fmt_any(provenance["limit"]),
        ),
    ]
    return {
        "steps": _recipe(results),
        "settings": [{"label": k, "value": v} for k, v in settings],
        "suites": suite_files,
    }


def build_manifest(results: Mapping[str, Any]) -> dict[str, Any]:
    manifest = mapping(results.get("manifest"))
    rows = [
        {
            "name": fmt_any(e.get("name")),
            "size": fmt_any(e.get("size")),
            "sha256": fmt_any(e.get("sha256")),
            "status": _STATUS_TEXT.get(str(e.get("status")), fmt_any(e.get("status"))),
            "ok": e.get("status") == "ok",
        }
        for e in (mapping(x) for x in manifest.get("entries") or [])
    ]
    return {"summary": manifest_summary(results), "rows": rows}

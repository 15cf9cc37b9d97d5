"""The evidence manifest: the SHA-256 of every file a record rests on, in one file whose own
hash a reviewer writes down.

``manifest.sha256`` lists ``results.json``, the suite files as run (copied to ``suites/``
when the run starts its record) and every file of the report folder the record refers to
(examples, counterexamples, radius maps), in ``sha256sum`` format, so that
``sha256sum -c manifest.sha256`` run in the report folder checks the bundle with no SegAudit
installed.  The report shows the manifest's own hash on its cover and in the sign-off block:
one hash that a signature covers and that changes if any listed byte changes.

Files are found by reading the record, not by listing the folder, so a file left there by an
earlier run is never vouched for.  ``index.html`` is not listed: it is derived from the
record and re-rendered byte for byte from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from audit.files import MANIFEST_FILE, file_sha256, write_bytes_atomic, write_text_atomic

RECORD_FILE = "results.json"
SUITES_DIR = "suites"
_RELATIVE_FILE = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+){0,6}\.[A-Za-z0-9]{1,8}"
)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def suite_copy_name(suite_name: str) -> str:
    """Where a suite's text as run is kept, relative to the report folder."""
    return f"{SUITES_DIR}/{_SAFE_NAME.sub('-', suite_name)}.toml"


def copy_suites(report_dir: Path, suites: Mapping[str, bytes]) -> None:
    """Write each suite's bytes, as read when the run loaded it, to its copy name."""
    for name, text in suites.items():
        write_bytes_atomic(report_dir / suite_copy_name(name), text)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def referenced_files(report_dir: Path, record: Mapping[str, Any]) -> list[str]:
    """The files inside ``report_dir`` that ``record`` names by a relative path, sorted.

    Provenance is skipped: its paths (the model file, the suite sources) are outside the
    folder and are identified by the hashes recorded beside them.
    """
    root = report_dir.resolve()
    found: set[str] = set()
    for key, value in record.items():
        if key == "provenance":
            continue
        for text in _strings(value):
            # evidence files are written under names made of these characters only
            if not _RELATIVE_FILE.fullmatch(text) or ".." in text:
                continue
            candidate = (root / text).resolve()
            try:
                if candidate.is_relative_to(root) and candidate.is_file():
                    found.add(candidate.relative_to(root).as_posix())
            except OSError:
                continue
    found.discard(MANIFEST_FILE)
    found.discard("index.html")
    return sorted(found)


def write_manifest(report_dir: Path, record: Mapping[str, Any]) -> Path:
    """Hash the record and every file it refers to into ``manifest.sha256``; return its path."""
    names = [RECORD_FILE, *(n for n in referenced_files(report_dir, record) if n != RECORD_FILE)]
    lines = [f"{file_sha256(report_dir / name)}  {name}\n" for name in names]
    path = report_dir / MANIFEST_FILE
    write_text_atomic(path, "".join(lines), fsync=True)
    return path

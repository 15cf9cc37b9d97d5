"""The evidence manifest as the report shows it: its own hash, and each listed file checked
against its hash when the page is rendered (written by :mod:`audit.record.manifest`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from audit.files import MANIFEST_FILE, file_sha256

_DIGEST = re.compile(r"[0-9a-f]{64}")


def read_manifest(report_dir: Path) -> dict[str, Any] | None:
    """The manifest as the report shows it: its own hash, and per file the listed hash, the
    size and whether the file still matches (``None`` when there is no manifest)."""
    path = report_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    entries = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or not _DIGEST.fullmatch(digest):
            entries.append(
                {"name": f"line {number}", "sha256": "", "size": None, "status": "malformed"}
            )
            continue
        target = report_dir / name
        if not target.is_file():
            status, size = "missing", None
        else:
            size = target.stat().st_size
            status = "ok" if file_sha256(target) == digest else "changed"
        entries.append({"name": name, "sha256": digest, "size": size, "status": status})
    return {
        "file": MANIFEST_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "entries": entries,
    }

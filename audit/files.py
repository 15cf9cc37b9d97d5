"""Files the run writes in place of older ones: atomically, and readable like any other file.

The record is rewritten while the run goes on and the report when it ends; a reader (a CI
step, a browser, ``python -m audit.report``) must never see half a file, so each is written
to a temporary file beside its target and moved over it with ``os.replace``.
``tempfile.mkstemp`` would create that temporary file with mode 0600, and the move keeps the
mode: a report meant for a review would be unreadable to everyone but the run's user.  The
temporary file is opened here with mode 0666 instead, which the process's umask reduces the
way it does for every new file (0644 under the usual umask 022).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

#: attempts at a free temporary name; a clash needs two writers drawing the same 8 hex digits
_ATTEMPTS = 16
#: the evidence manifest in a report folder (written by audit.record.manifest, shown by the
#: report); ``sha256sum -c`` format
MANIFEST_FILE = "manifest.sha256"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (evidence arrays can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace ``path`` by a file holding ``text`` (UTF-8), never leaving half a file.

    With ``fsync`` the bytes reach the disk before the move, so a crash of the machine (not
    only of the process) leaves the old file or the new one.
    """
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """:func:`write_text_atomic` for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path} after {_ATTEMPTS} attempts")

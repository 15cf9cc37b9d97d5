"""Registry of claim kinds.

Built-in kinds are the modules of this package; third-party kinds register through the
``segaudit.claims`` entry-point group.  Either way a new kind is a new module: nothing
else (the plugin, the suite loader) changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from audit.claims.base import (
    ClaimFailed,
    ClaimKind,
    ClaimSpec,
    Measurement,
    Threshold,
    Verdict,
    Where,
    judge,
)

__all__ = [
    "ClaimFailed",
    "ClaimKind",
    "ClaimSpec",
    "Measurement",
    "Threshold",
    "Verdict",
    "Where",
    "get_kind",
    "judge",
    "known_kinds",
    "register",
]

_KINDS: dict[str, type[ClaimKind]] = {}
_loaded = False


def register(cls: type[ClaimKind]) -> type[ClaimKind]:
    """Class decorator: make ``cls`` available as ``kind = "<cls.name>"`` in suite files."""
    existing = _KINDS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"claim kind {cls.name!r} registered twice: {existing} and {cls}")
    _KINDS[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    for ep in entry_points(group="segaudit.claims"):
        ep.load()


def known_kinds() -> tuple[str, ...]:
    _load_all()
    return tuple(sorted(_KINDS))


def get_kind(name: str) -> type[ClaimKind]:
    """The registered kind called ``name``; ``KeyError`` if there is none."""
    _load_all()
    return _KINDS[name]

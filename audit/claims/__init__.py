"""Registry of claim kinds.

Built-in kinds are the modules of this package; third-party kinds register through the
``segaudit.claims`` entry-point group.  Either way a new kind is a new module: nothing
else (the plugin, the suite loader) changes.
"""

from __future__ import annotations

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
from audit.registry import Registry

__all__ = [
    "KINDS",
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

#: claim kinds by the name a suite's ``kind`` key uses; third parties add one through the
#: ``segaudit.claims`` entry-point group
KINDS: Registry[type[ClaimKind]] = Registry("claim kind", "segaudit.claims", builtins=[__name__])


def register(cls: type[ClaimKind]) -> type[ClaimKind]:
    """Class decorator: make ``cls`` available as ``kind = "<cls.name>"`` in suite files."""
    return KINDS.register(cls)


def known_kinds() -> tuple[str, ...]:
    return tuple(sorted(KINDS.names()))


def get_kind(name: str) -> type[ClaimKind]:
    """The registered kind called ``name``; ``KeyError`` if there is none."""
    return KINDS.get(name)

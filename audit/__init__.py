"""SegAudit: robustness claims for semantic segmentation models, checked as pytest items.

The public API, for running an audit from Python or extending it::

    from audit import Settings, run_audit

    record = run_audit(Settings(model="model.pt", data="synthetic?n=32", suites=("smoke",)))

- running: :class:`Settings` (what to audit), :func:`run_audit` (a whole run, returns the
  record), :class:`AuditSession` (the run, driven claim by claim, as the plugin does),
  :class:`Engine` (device, batches, cached evaluations), :func:`load_model`,
  :func:`open_dataset`;
- extending: :class:`ClaimKind` with :func:`register` (a claim kind), :class:`ClaimSpec` and
  :class:`Measurement` (what a kind parses and returns), :class:`Attack` and
  :class:`MinNormAttack` (attack base classes);
- :class:`SegAuditError`, the root of every error SegAudit raises on purpose.

Each name is imported on first use (PEP 562), so ``import audit`` and the pytest plugin stay
free of torch until an audit runs.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.attacks.base import Attack, MinNormAttack
    from audit.claims import ClaimKind, ClaimSpec, Measurement, register
    from audit.config import Settings
    from audit.data import open_dataset
    from audit.engine import Engine
    from audit.errors import SegAuditError
    from audit.model import load_model
    from audit.session import AuditSession, run_audit

try:
    __version__ = version("pytest-segaudit")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Settings": "audit.config",
    "run_audit": "audit.session",
    "AuditSession": "audit.session",
    "Engine": "audit.engine",
    "load_model": "audit.model",
    "open_dataset": "audit.data",
    "ClaimKind": "audit.claims",
    "ClaimSpec": "audit.claims",
    "Measurement": "audit.claims",
    "register": "audit.claims",
    "Attack": "audit.attacks.base",
    "MinNormAttack": "audit.attacks.base",
    "SegAuditError": "audit.errors",
}

__all__ = [
    "Attack",
    "AuditSession",
    "ClaimKind",
    "ClaimSpec",
    "Engine",
    "Measurement",
    "MinNormAttack",
    "SegAuditError",
    "Settings",
    "load_model",
    "open_dataset",
    "register",
    "run_audit",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public API (submodules such as ``audit.metrics`` are imported by name)."""
    return sorted([*__all__, "__version__"])

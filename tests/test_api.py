"""The public API of ``audit``: a few names, imported on first use."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

import audit


def test_all_lists_names_that_resolve() -> None:
    assert len(set(audit.__all__)) == len(audit.__all__) == 13
    for name in audit.__all__:
        value = getattr(audit, name)
        assert getattr(value, "__name__", name) == name, f"audit.{name} is {value!r}"
    from audit.claims import register
    from audit.session import run_audit

    assert audit.run_audit is run_audit and audit.register is register
    assert issubclass(audit.SegAuditError, Exception)


def test_dir_is_the_public_api_and_version() -> None:
    assert dir(audit) == sorted([*audit.__all__, "__version__"])
    assert audit.__version__ == version("pytest-segaudit")


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'audit' has no attribute 'Nope'"):
        audit.Nope  # noqa: B018


def test_import_audit_loads_no_audit_module() -> None:
    code = "import sys, audit; print(sorted(m for m in sys.modules if m.startswith('audit.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"

"""Where the files that ship beside the code live: suites, report templates, the demo model,
the record's JSON Schema.

In a wheel, ``suites/`` and ``reports/`` are mapped into the package as ``audit/suites`` and
``audit/reports`` (hatchling ``force-include``).  An editable install does not apply
``force-include``, so there the repository's top-level folders are used instead.  Every
lookup goes through :func:`resource_dir` so both install modes behave the same.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the directory ``name`` (``"suites"`` or ``"reports"``) for this installation."""
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"SegAudit's {name!r} folder is missing: looked in {_PACKAGE_DIR / name} and "
        f"{_PACKAGE_DIR.parent / name}; the installation is incomplete"
    )


def suites_dir() -> Path:
    """Folder holding the built-in claim suites (``<name>.toml``)."""
    return resource_dir("suites")


def templates_dir() -> Path:
    """Folder holding the Jinja2 templates of the HTML report."""
    return resource_dir("reports") / "templates"


def demo_model_file() -> Path:
    """The bundled demo model (a TorchScript file with an ``audit.json`` extra file)."""
    return _PACKAGE_DIR / "assets" / "demo_segnet.pt"


def results_schema_file() -> Path:
    """The JSON Schema of ``results.json`` (inside the package in both install modes)."""
    return _PACKAGE_DIR / "schemas" / "results.schema.json"

"""The wheel ships suites, report templates, the demo model and the record's JSON Schema, and
finds them once installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from audit import resources

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: use the installed hatchling, so the test downloads nothing
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    (built,) = out.glob("pytest_segaudit-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contains_resources_and_entry_point(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "audit/plugin.py" in names
    assert "audit/suites/smoke.toml" in names
    assert "audit/reports/templates/index.html.j2" in names
    assert "audit/reports/templates/style.css" in names
    assert "audit/assets/demo_segnet.pt" in names
    assert "audit/schemas/results.schema.json" in names
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]" in text and "segaudit = audit.plugin" in text


@pytest.mark.slow
def test_installed_layout_resolves_resources_inside_the_package(
    wheel: Path, tmp_path: Path
) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "from audit import resources as r; "
        "print(r.suites_dir()); print(r.templates_dir()); print(r.demo_model_file()); "
        "print(r.results_schema_file())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    ).stdout.split()
    assert out == [
        str(tmp_path / "audit" / "suites"),
        str(tmp_path / "audit" / "reports" / "templates"),
        str(tmp_path / "audit" / "assets" / "demo_segnet.pt"),
        str(tmp_path / "audit" / "schemas" / "results.schema.json"),
    ]
    assert (tmp_path / "audit" / "schemas" / "results.schema.json").is_file()


def test_source_checkout_falls_back_to_top_level_folders() -> None:
    assert resources.suites_dir() == REPO / "suites"
    assert resources.templates_dir() == REPO / "reports" / "templates"
    assert (resources.templates_dir() / "index.html.j2").is_file()


def test_missing_resource_folder_says_installation_is_incomplete() -> None:
    with pytest.raises(FileNotFoundError, match="installation is incomplete"):
        resources.resource_dir("no-such-folder")

"""Settings: precedence of command line over audit.toml over [tool.segaudit], and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.config import DEMO_MODEL, Settings, resolve_settings
from audit.errors import ConfigError

EMPTY_CLI: dict = {}


def test_defaults_without_any_file(tmp_path: Path) -> None:
    s = resolve_settings(rootdir=tmp_path, cli=EMPTY_CLI, invocation_dir=tmp_path)
    assert s.model == DEMO_MODEL and s.uses_demo_model
    assert s.suites == ("smoke",)
    assert s.data == "synthetic"
    assert s.report_dir == (tmp_path / "audit-report").resolve()
    assert (s.device, s.seed, s.limit, s.batch_size, s.trust_pickle) == ("auto", 0, None, 8, False)


def test_precedence_cli_over_audit_toml_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.segaudit]\nseed = 1\nbatch_size = 2\nlimit = 5\nsuites = ["a.toml"]\n'
        'report = "out"\n[tool.segaudit.metadata]\nnum_classes = 8\n'
    )
    (tmp_path / "audit.toml").write_text("seed = 2\nbatch_size = 3\n")
    inv = tmp_path / "sub"
    s = resolve_settings(rootdir=tmp_path, cli={"seed": 9, "model": "m.pt"}, invocation_dir=inv)
    assert s.seed == 9
    assert s.batch_size == 3
    assert s.limit == 5
    assert s.suites == ("a.toml",)
    assert s.metadata == {"num_classes": 8}
    # file paths are relative to the project root, command-line paths to where pytest ran
    assert s.report_dir == (tmp_path / "out").resolve()
    assert s.model == str(inv / "m.pt")
    assert s.sources["seed"] == "command line"
    assert s.sources["batch_size"] == str(tmp_path / "audit.toml")
    assert s.base_for("suites") == tmp_path


def test_empty_cli_suite_list_keeps_file_suites(tmp_path: Path) -> None:
    (tmp_path / "audit.toml").write_text('suites = "mine"\n')
    s = resolve_settings(rootdir=tmp_path, cli={"suites": ()}, invocation_dir=tmp_path)
    assert s.suites == ("mine",)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sed = 1", r"audit.toml, key 'sed': unknown setting; known settings are .*seed"),
        ('seed = "one"', r"key 'seed': expected an integer, got 'one' \(str\)"),
        ("batch_size = 0", r"key 'batch_size': must be >= 1, got 0"),
        ('device = "gpu"', r"key 'device': expected auto, cpu, cuda, cuda:<index> or mps"),
        ("trust_pickle = 1", r"key 'trust_pickle': expected true or false"),
        ('factory = "nocolon"', r"key 'factory': expected 'package.module:function'"),
        ("confidence = 1.5", r"key 'confidence': expected a number between 0 and 1"),
        ("suites = [1]", r"key 'suites': expected a suite name or path"),
        ("seed = ", r"audit.toml: not valid TOML"),
    ],
)
def test_bad_audit_toml_names_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "audit.toml").write_text(text + "\n")
    with pytest.raises(ConfigError, match=match):
        resolve_settings(rootdir=tmp_path, cli=EMPTY_CLI, invocation_dir=tmp_path)


def test_bad_pyproject_table_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.segaudit]\nlimit = -3\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.segaudit\], key 'limit'"):
        resolve_settings(rootdir=tmp_path, cli=EMPTY_CLI, invocation_dir=tmp_path)


def test_bad_command_line_value_says_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"command line, key 'device'"):
        resolve_settings(rootdir=tmp_path, cli={"device": "tpu"}, invocation_dir=tmp_path)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().seed = 3  # type: ignore[misc]

"""End to end: the bundled demo model, audited as `make demo` does, and with a failing claim."""

from __future__ import annotations

import json

import pytest

MIXED = """
name = "mixed"
description = "one claim the demo model meets and one it cannot"
[[claims]]
id = "miou-floor"
statement = "Clean mIoU is at least 0.5"
kind = "clean"
metric = "miou"
min = 0.5

[[claims]]
id = "miou-perfect"
statement = "Clean mIoU is at least 0.99"
kind = "clean"
metric = "miou"
min = 0.99
"""


@pytest.mark.slow
def test_demo_audit_with_the_smoke_suite_passes_and_writes_the_report(
    pytester: pytest.Pytester, run_audit
) -> None:
    result = run_audit("--audit", "demo", "--audit-suite", "smoke", "--audit-only")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    assert record["status"] == "passed" and record["complete"] is True
    assert record["provenance"]["model"]["format"] == "torchscript"
    assert record["provenance"]["model"]["metadata"]["lipschitz"] is not None
    clean = record["evaluations"]["clean"]
    assert clean["num_samples"] == 64 and clean["metrics"]["miou"] >= 0.75
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "PASS" in html and "clean-miou" in html


@pytest.mark.slow
def test_demo_with_one_failing_claim_exits_1_and_reports_both(
    pytester: pytest.Pytester, run_audit
) -> None:
    pytester.makefile(".toml", mixed=MIXED)
    result = run_audit(
        "--audit", "demo", "--audit-suite", "mixed.toml", "--audit-limit", "16", "-rA"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    record = json.loads((pytester.path / "audit-report" / "results.json").read_text())
    failing = next(c for c in record["claims"] if c["id"] == "miou-perfect")
    measured = f"{failing['measured']:.3f}"
    result.stdout.fnmatch_lines(
        [
            f"*claim 'miou-perfect' violated: mIoU on clean images is {measured}, "
            "claim requires >= 0.99 (16 images*"
        ]
    )
    html = (pytester.path / "audit-report" / "index.html").read_text()
    assert "miou-perfect" in html and "miou-floor" in html
    assert measured in html and "&gt;= 0.99" in html

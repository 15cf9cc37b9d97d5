"""Users' own tests through the fixtures: the strategies and corruptions in a plain Hypothesis
test, its outcome and shrunk falsifying example in the record and the report."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_DATA, report_files

USER_TESTS = """
from hypothesis import given, settings
import torch

from audit.evaluations import evaluate_clean
from audit.strategies import corruption_params, perturbations


@settings(max_examples=5, deadline=None, database=None)
@given(params=corruption_params(["brightness", "fog"], severity=(0, 5)))
def test_corrupted_images_stay_in_range(audit_engine, params):
    batch = next(iter(audit_engine.batches()))
    out = params.apply(batch.images, batch.indices)
    assert out.shape == batch.images.shape and 0 <= float(out.min()) and float(out.max()) <= 1


@settings(max_examples=10, deadline=None, database=None)
@given(p=perturbations(eps=0.5, norm="l2"))
def test_no_pixel_changes(audit_engine, p):
    batch = next(iter(audit_engine.batches()))
    clean = audit_engine.forward(batch.images).argmax(1)
    changed = audit_engine.forward(p.apply(batch.images)).argmax(1) != clean
    assert not bool(changed.any()), "a pixel changed"


def test_plain(audit_engine):
    assert evaluate_clean(audit_engine).num_samples == 4


def test_not_recorded():
    pass
"""


def test_a_users_hypothesis_test_through_the_fixtures_appears_in_the_report(
    pytester: pytest.Pytester, run_audit, tiny_model
) -> None:
    pytester.makepyfile(test_mine=USER_TESTS)
    pytester.makefile(
        ".toml",
        gate='name = "gate"\n[[claims]]\nid = "c"\nkind = "clean"\nmetric = "miou"\nmin = 0\n',
    )
    result = run_audit(
        f"--audit={tiny_model}",
        "--audit-data",
        TINY_DATA,
        "--audit-suite",
        "gate.toml",
        "test_mine.py",
    )
    result.assert_outcomes(passed=4, failed=1)  # the claim and 3 of my 4 tests
    record, html = report_files(pytester.path / "audit-report")
    tests = {t["nodeid"].rpartition("::")[2]: t for t in record["user_tests"]}
    assert set(tests) == {
        "test_corrupted_images_stay_in_range",
        "test_no_pixel_changes",
        "test_plain",
    }
    failed = tests["test_no_pixel_changes"]
    assert failed["outcome"] == "failed" and failed["hypothesis"] is True
    assert "test_no_pixel_changes(" in failed["falsifying_example"]
    assert "p=Perturbation(" in failed["falsifying_example"]
    assert tests["test_plain"]["outcome"] == "passed" and not tests["test_plain"]["hypothesis"]
    assert 'id="user-tests"' in html and "p=Perturbation(" in html

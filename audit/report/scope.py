"""The report's "Identification and scope" section: what was audited, on what, and for what.

Model identity (file, SHA-256, format, resolutions and any resize), the data and its
fingerprint, the suites as run, and the scope the suites state (intended use, operational
domain, explicit non-claims).  Where the suites state no scope, the section says so: an
audit without one cannot say whether its data stands for the conditions the model will meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import fmt_pickle_trust, mapping, output_resize, suites
from audit.report.format import MISSING, fmt_any, fmt_resolution


def _model(provenance: Mapping[str, Any]) -> list[dict[str, str]]:
    model = mapping(provenance.get("model"))
    metadata = mapping(model.get("metadata"))
    rows = [
        ("Name", fmt_any(metadata.get("name"))),
        ("File", fmt_any(model.get("path"))),
        ("SHA-256", fmt_any(model.get("sha256"))),
        ("Format", fmt_any(model.get("format"))),
        ("Pickle trust", fmt_pickle_trust(provenance.get("trust_pickle"))),
        ("Input resolution", fmt_resolution(model.get("input_resolution"))),
        ("Output resolution", fmt_resolution(model.get("output_resolution"))),
        ("Resize", output_resize(model) or "none (logits at the input size)"),
        ("Classes", fmt_any(metadata.get("num_classes"))),
    ]
    return [{"label": label, "value": value} for label, value in rows]


def _data(dataset: Mapping[str, Any]) -> list[dict[str, str]]:
    audited, available = dataset.get("num_samples"), dataset.get("available_samples")
    images = fmt_any(audited)
    if isinstance(available, int) and isinstance(audited, int) and available != audited:
        images = f"{audited} of {available} available"
    rows = [
        ("Spec", fmt_any(dataset.get("spec"))),
        ("Kind", fmt_any(dataset.get("kind"))),
        ("Fingerprint (SHA-256)", fmt_any(dataset.get("fingerprint"))),
        ("Images audited", images),
        ("Resolution", fmt_resolution(dataset.get("resolution"))),
        ("Classes", fmt_any(dataset.get("class_names"))),
        ("Ignore index", fmt_any(dataset.get("ignore_index"))),
    ]
    return [{"label": label, "value": value} for label, value in rows]


def _suite(suite: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": fmt_any(suite.get("name")),
        "description": str(suite.get("description") or ""),
        "sha256": fmt_any(suite.get("sha256")),
        "builtin": suite.get("builtin") is True,
        "intended_use": str(suite.get("intended_use") or ""),
        "operational_domain": str(suite.get("operational_domain") or ""),
        "non_claims": [str(item) for item in suite.get("non_claims") or [] if item],
    }


def build_scope(results: Mapping[str, Any]) -> dict[str, Any]:
    provenance = mapping(results.get("provenance"))
    dataset = mapping(provenance.get("dataset"))
    listed = [_suite(suite) for suite in suites(results)]
    stated = any(s["intended_use"] or s["operational_domain"] for s in listed)
    warnings = []
    if not stated:
        warnings.append(
            "No suite states an intended use or operational domain, so this audit cannot say "
            "whether its data stands for the conditions the model will meet. Add "
            "intended_use, operational_domain and non_claims to the suite."
        )
    if dataset.get("kind") == "synthetic":
        warnings.append(
            "The data is synthetic: the numbers show the harness works and how this model "
            "behaves on generated scenes, not how it behaves on real ones."
        )
    if any(s["builtin"] for s in listed):
        warnings.append(
            "Built-in suites were run: their thresholds are examples from the papers, not "
            "requirements for this model."
        )
    return {
        "model": _model(provenance),
        "data": _data(dataset),
        "suites": listed,
        "scope_stated": stated,
        "warnings": warnings,
        "missing": MISSING,
    }

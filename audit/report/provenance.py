"""The report's "Provenance" section: model, dataset, run and versions, as recorded."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from audit.report.accessors import fmt_pickle_trust, mapping, output_resize, suites
from audit.report.format import fmt_any, fmt_duration, fmt_resolution


def _limit(value: Any) -> str:
    return "none (all samples)" if value is None else fmt_any(value)


def _rows(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
    return [{"label": label, "value": value} for label, value in pairs]


def _prefixed(prefix: str, values: Any) -> list[tuple[str, str]]:
    """``prefix.key`` rows for a free-form mapping (model metadata, dataset description)."""
    return [(f"{prefix}.{key}", fmt_any(value)) for key, value in mapping(values).items()]


def _model_output_rows(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the model outputs and how it was resized; absent before the model first ran."""
    rows = []
    if "output_resolution" in model:
        rows.append(("Output resolution", fmt_resolution(model.get("output_resolution"))))
        rows.append(("Resize", output_resize(model) or "none (logits at the input size)"))
    replaced = mapping(model.get("embedded_keys_replaced"))
    if replaced:
        rows.append(
            (
                "Ignored audit.json keys",
                ", ".join(f"{k} (replaced by {v})" for k, v in replaced.items()),
            )
        )
    return rows


def _model_rows(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    model = mapping(provenance.get("model"))
    return [
        ("Path", fmt_any(model.get("path"))),
        ("SHA-256", fmt_any(model.get("sha256"))),
        ("Format", fmt_any(model.get("format"))),
        ("Pickle trust", fmt_pickle_trust(provenance.get("trust_pickle"))),
        *_prefixed("metadata", model.get("metadata")),
        *_model_output_rows(model),
    ]


def _dataset_rows(dataset: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Spec", fmt_any(dataset.get("spec"))),
        ("Kind", fmt_any(dataset.get("kind"))),
        ("Fingerprint", fmt_any(dataset.get("fingerprint"))),
        ("Samples", fmt_any(dataset.get("num_samples"))),
        ("Resolution", fmt_resolution(dataset.get("resolution"))),
        ("Ignore index", fmt_any(dataset.get("ignore_index"))),
        ("Classes", fmt_any(dataset.get("class_names"))),
        *_prefixed("describe", dataset.get("describe")),
    ]


def _run_rows(results: Mapping[str, Any], provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    command = provenance.get("command_line")
    if isinstance(command, list) and all(isinstance(part, str) for part in command):
        command_text = shlex.join(command)
    else:
        command_text = fmt_any(command)
    return [
        ("Seed", fmt_any(provenance.get("seed"))),
        ("Device", fmt_any(provenance.get("device"))),
        ("Batch size", fmt_any(provenance.get("batch_size"))),
        ("Sample limit", _limit(provenance.get("limit"))),
        ("Command line", command_text),
        ("Started", fmt_any(provenance.get("started_at"))),
        ("Finished", fmt_any(provenance.get("finished_at"))),
        ("Duration", fmt_duration(provenance.get("duration_s"))),
        ("Host", fmt_any(provenance.get("hostname"))),
        ("Schema version", fmt_any(results.get("schema_version"))),
    ]


def build_provenance(results: Mapping[str, Any]) -> dict[str, Any]:
    provenance = mapping(results.get("provenance"))
    groups = [
        {"title": "Model", "rows": _rows(_model_rows(provenance))},
        {"title": "Dataset", "rows": _rows(_dataset_rows(mapping(provenance.get("dataset"))))},
        {"title": "Run", "rows": _rows(_run_rows(results, provenance))},
        {
            "title": "Versions",
            "rows": _rows(
                (str(name), fmt_any(version))
                for name, version in mapping(provenance.get("versions")).items()
            ),
        },
    ]
    suite_rows = [
        {
            "name": fmt_any(suite.get("name")),
            "description": fmt_any(suite.get("description")),
            "path": fmt_any(suite.get("path")),
        }
        for suite in suites(results)
    ]
    return {"groups": [g for g in groups if g["rows"]], "suites": suite_rows}

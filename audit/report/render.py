"""Rendering: schema check, loading ``results.json`` and writing ``index.html``.

The Jinja environment lives here; the sections feed it and :mod:`audit.report.embed` gives
partials their ``embed_image`` (a thumbnail linked to the full-resolution file) and
``image_link`` (a link alone) helpers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from audit.errors import SegAuditError
from audit.files import write_text_atomic
from audit.report.accessors import counts, fmt_pickle_trust, mapping, run_errors, status
from audit.report.embed import PageImages
from audit.report.format import fmt_any
from audit.report.manifest import read_manifest
from audit.report.sections import sections
from audit.resources import templates_dir

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
INDEX_FILE = "index.html"


@dataclass(frozen=True)
class _RenderedSection:
    key: str
    title: str
    template: str
    context: Mapping[str, Any] | None
    error: str | None


@lru_cache(maxsize=4)
def _environment(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        # Partials are named *.html.j2; ".j2" must be listed or select_autoescape misses them.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "j2", "svg", "xml"),
            default_for_string=True,
            default=True,
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _templates() -> Path:
    try:
        return templates_dir()
    except FileNotFoundError as exc:
        raise SegAuditError(str(exc)) from exc


def check_schema(results: Any, *, source: str = "results") -> None:
    """Raise :class:`SegAuditError` unless ``results`` is a schema-1 results mapping."""
    if not isinstance(results, Mapping):
        raise SegAuditError(f"{source}: expected a JSON object, got {type(results).__name__}")
    version = results.get("schema_version")
    if version is None:
        raise SegAuditError(f"{source}: no 'schema_version'; this is not a SegAudit results file")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SegAuditError(f"{source}: 'schema_version' must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise SegAuditError(
            f"{source}: schema_version {version} was written by a newer SegAudit; this version "
            f"renders schema_version {SCHEMA_VERSION}. Upgrade segaudit to render it."
        )
    if version != SCHEMA_VERSION:
        raise SegAuditError(
            f"{source}: unknown schema_version {version}; this version renders "
            f"schema_version {SCHEMA_VERSION}"
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _incomplete_reasons(results: Mapping[str, Any]) -> list[str]:
    totals = counts(results)
    reasons = []
    if results.get("status") == "running":  # audit.results.RUNNING: never finished
        reasons.append(_unfinished(mapping(results.get("progress"))))
    if isinstance(results.get("reason"), str) and results["reason"]:
        reasons.append(results["reason"])
    if totals["not_run"]:
        reasons.append(f"{totals['not_run']} of {_plural(totals['total'], 'claim')} were not run")
    if totals["error"]:
        reasons.append(f"{_plural(totals['error'], 'claim')} ended in an error")
    if run_errors(results):
        errors = _plural(len(run_errors(results)), "error")
        reasons.append(f"{errors} outside any claim (see the summary)")
    if not isinstance(mapping(results.get("evaluations")).get("clean"), Mapping):
        reasons.append("no clean evaluation was recorded")
    return reasons


def _unfinished(progress: Mapping[str, Any]) -> str:
    """Where a run that never finished was when it last wrote its record."""
    text = "the process ended without finishing its record (killed, or still running)"
    if progress.get("updated_at"):
        text += f"; it was last written at {fmt_any(progress['updated_at'])}"
    if progress.get("claim"):
        text += f", while claim {fmt_any(progress['claim'])} was running"
        evaluation = mapping(progress.get("evaluation"))
        if evaluation.get("samples_total"):
            text += (
                f" ({fmt_any(evaluation.get('samples_done'))} of "
                f"{fmt_any(evaluation['samples_total'])} images of its current evaluation done)"
            )
    return text


#: a suite copy larger than this is linked, not printed in the annex
MAX_SUITE_TEXT = 64_000


def _suite_texts(results: Mapping[str, Any], report_dir: Path) -> dict[str, str | None]:
    texts: dict[str, str | None] = {}
    root = report_dir.resolve()
    for suite in results.get("suites") or []:
        copy = suite.get("copy") if isinstance(suite, Mapping) else None
        if not isinstance(copy, str):
            continue
        path = (root / copy).resolve()
        try:
            if not path.is_relative_to(root) or path.stat().st_size > MAX_SUITE_TEXT:
                texts[copy] = None
                continue
            texts[copy] = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            texts[copy] = None
    return texts


def section_inputs(results: Mapping[str, Any], report_dir: Path) -> dict[str, Any]:
    """What section builders read: the record, plus the evidence manifest as checked now and
    the suite files as run (see :mod:`audit.report.sections`)."""
    return {
        **results,
        "manifest": read_manifest(report_dir),
        "suite_texts": _suite_texts(results, report_dir),
    }


def _css_string(text: str) -> str:
    """``text`` as a CSS string literal (for the running header of printed pages)."""
    escaped = "".join(
        ch if ch.isalnum() or ch in " .,:;-_()/[]+=@" else f"\\{ord(ch):x} " for ch in text
    )
    return f'"{escaped}"'


def _build_sections(results: Mapping[str, Any]) -> list[_RenderedSection]:
    rendered = []
    for section in sections():
        try:
            context = section.build(results)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            # One malformed block must not take the rest of the evidence down with it.
            message = f"{type(exc).__name__}: {exc}"
            rendered.append(_RenderedSection(section.key, section.title, "", None, message))
            continue
        if context is not None:
            rendered.append(
                _RenderedSection(section.key, section.title, section.template, context, None)
            )
    return rendered


def render_html(results: Mapping[str, Any], *, report_dir: Path) -> str:
    """The report page for ``results``; image paths in it are relative to ``report_dir``."""
    check_schema(results)
    report_dir = Path(report_dir)
    directory = _templates()
    env = _environment(str(directory))
    rendered = _build_sections(section_inputs(results, report_dir))
    for section in rendered:
        if section.error is None:
            try:
                env.get_template(section.template)
            except jinja2.TemplateNotFound as exc:
                raise SegAuditError(
                    f"report section {section.key!r}: template {section.template!r} "
                    f"not found in {directory}"
                ) from exc
    try:
        css = (directory / "style.css").read_text(encoding="utf-8")
    except OSError as exc:
        raise SegAuditError(
            f"cannot read the report stylesheet {directory / 'style.css'}: {exc}"
        ) from exc
    provenance = mapping(results.get("provenance"))
    model = mapping(provenance.get("model"))
    dataset = mapping(provenance.get("dataset"))
    model_name = mapping(model.get("metadata")).get("name") or (
        Path(model["path"]).name if isinstance(model.get("path"), str) else None
    )
    complete = results.get("complete") is True
    badge, badge_css = status(results)
    trust = mapping(provenance.get("trust_pickle"))
    images = PageImages(report_dir)
    title = f"SegAudit: {fmt_any(model_name)} on {fmt_any(dataset.get('spec'))} ({badge})"
    return env.get_template("index.html.j2").render(
        # a CSS string built from escaped characters only, so it is safe inside <style>
        running_header=Markup(_css_string(title)),
        # style.css ships with the package, so it is trusted markup.
        css=Markup(css),
        sections=rendered,
        # partials link to another section only where it was rendered
        rendered_keys=frozenset(s.key for s in rendered if s.error is None),
        complete=complete,
        incomplete_reasons=[] if complete else _incomplete_reasons(results),
        badge=badge,
        badge_css=badge_css,
        model_name=fmt_any(model_name),
        dataset_spec=fmt_any(dataset.get("spec")),
        started_at=fmt_any(provenance.get("started_at")),
        pickle_trust=fmt_pickle_trust(trust),
        pickle_trusted=trust.get("enabled") is True,
        segaudit_version=fmt_any(mapping(provenance.get("versions")).get("segaudit")),
        schema_version=SCHEMA_VERSION,
        embed_image=images,
        image_link=images.link,
        # Called at the end of the page, after every section has drawn its images.
        image_definitions=images.definitions,
    )


def load_results(report_dir: str | Path) -> dict[str, Any]:
    """Read and schema-check ``report_dir/results.json``."""
    path = Path(report_dir) / RESULTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SegAuditError(
            f"{path}: no results file; run an audit into this folder first"
        ) from None
    except OSError as exc:
        raise SegAuditError(f"{path}: cannot read: {exc}") from exc
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SegAuditError(f"{path}: not valid JSON: {exc}") from exc
    check_schema(results, source=str(path))
    return results


def render_report(report_dir: str | Path, *, results: Mapping[str, Any] | None = None) -> Path:
    """Write ``report_dir/index.html`` from ``results`` (or ``report_dir/results.json``).

    The page is written to a temporary file in the same folder and moved into place, so a
    reader never sees half a report and a crash leaves the previous one intact.
    """
    report_dir = Path(report_dir)
    if not report_dir.is_dir():
        raise SegAuditError(f"{report_dir}: report folder does not exist")
    if results is None:
        results = load_results(report_dir)
    html = render_html(results, report_dir=report_dir)
    target = report_dir / INDEX_FILE
    write_text_atomic(target, html, fsync=True)
    return target

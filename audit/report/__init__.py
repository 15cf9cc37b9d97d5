"""The HTML audit report: ``results.json`` and the images beside it in, one self-contained page out.

The page is built from an ordered registry of *sections*.  Each section is a key (the HTML
anchor), a title (the heading and table-of-contents entry), a partial template in the
templates folder, and a builder: a pure function from the results mapping to the partial's
context, or ``None`` when the section has nothing to show.  Builders do all the defaulting and
number formatting, so partials only print ready-made strings (the environment uses
``StrictUndefined``; a partial that reaches for a missing key fails loudly instead of printing
nothing).  Adding a section is one partial plus one :func:`register_section` call.

Everything in the page is inline: CSS from ``style.css``, charts as SVG, and images as WebP
thumbnails in data URIs, each distinct image once, linked to its full-resolution file in the
report folder (partials call ``embed_image(path, alt)``, and ``image_link(path, text)`` for
a link alone; :mod:`~audit.report.embed`).  Nothing refers to the network, so the file can
be archived, mailed and printed for a review; the links work where the folder goes with it.
Each evaluation shows a fixed gallery of its worst examples and links the others, so the
page does not grow with the number of images audited (budget and figures: bench/README.md).
Claim statements, sample names and paths are user text, so autoescaping is on for every
template.

An incomplete run (``complete`` is not ``true``) gets a banner listing what is missing; an
optional top-level ``"reason"`` string, when the writer records one, leads that list.

Re-render a report from the command line with ``python -m audit.report REPORT_DIR``.

The package is split by job: :mod:`~audit.report.format` (value formatters),
:mod:`~audit.report.accessors` (tolerant accessors of ``results.json``, verdict and status
labels), :mod:`~audit.report.charts` (SVG chart primitives: palettes, colour maps, markers,
axes, ticks, legends), :mod:`~audit.report.sections` (the registry), one module per built-in
section (:mod:`~audit.report.summary`, :mod:`~audit.report.clean`,
:mod:`~audit.report.attacks`, :mod:`~audit.report.certificates` with
:mod:`~audit.report.lipschitz`, :mod:`~audit.report.certified` and
:mod:`~audit.report.soundness`, :mod:`~audit.report.provenance`),
:mod:`~audit.report.embed` (thumbnails, each embedded once), :mod:`~audit.report.render`
(schema check, Jinja environment, writing the page) and :mod:`~audit.report.__main__` (the
command line).
"""

from __future__ import annotations

from audit.report.clean import MAX_CONFUSION_CLASSES, build_clean, build_confusion
from audit.report.embed import MAX_EMBED_BYTES, embed_image
from audit.report.format import (
    fmt_any,
    fmt_bound,
    fmt_duration,
    fmt_interval,
    fmt_interval_method,
    fmt_number,
    fmt_percent,
    fmt_resize,
    fmt_resolution,
    fmt_threshold,
)
from audit.report.provenance import build_provenance
from audit.report.render import (
    INDEX_FILE,
    RESULTS_FILE,
    SCHEMA_VERSION,
    check_schema,
    load_results,
    render_html,
    render_report,
)
from audit.report.requirements import build_claims
from audit.report.sections import (
    Section,
    SectionBuilder,
    register_section,
    sections,
    unregister_section,
)
from audit.report.summary import build_summary

__all__ = [
    "INDEX_FILE",
    "MAX_CONFUSION_CLASSES",
    "MAX_EMBED_BYTES",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "Section",
    "SectionBuilder",
    "build_claims",
    "build_clean",
    "build_confusion",
    "build_provenance",
    "build_summary",
    "check_schema",
    "embed_image",
    "fmt_any",
    "fmt_bound",
    "fmt_duration",
    "fmt_interval",
    "fmt_interval_method",
    "fmt_number",
    "fmt_percent",
    "fmt_resize",
    "fmt_resolution",
    "fmt_threshold",
    "load_results",
    "register_section",
    "render_html",
    "render_report",
    "sections",
    "unregister_section",
]

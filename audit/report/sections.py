"""The report's sections: the :class:`Section` type and the ordered registry, built-ins first.

The built-in order is the order an assessor reads a test report in (ISO/IEC/IEEE 29119-3,
UL 4600 and ISO/PAS 8800 dossiers): the cover, identification and scope, the requirements
with their verdicts (a traceability matrix), the environment and the tool's confidence in
itself, the results by claim kind, incidents and deviations, residual risk, the conclusion
with a sign-off block, and the annexes (reproduction, provenance, evidence manifest).

Each builder is a pure function from its input mapping to its partial's context, or ``None``
when the section has nothing to show.  The input is the ``results.json`` record plus two keys
the renderer adds from the report folder, never written to the record: ``manifest`` (the
evidence manifest as read and checked, or ``None``) and ``suite_texts`` (suite copy path ->
its text, or ``None`` when the file is missing).  Builders do all the defaulting and number
formatting, so partials only print ready-made strings.  The built-in builders live one section
(or one pair of closely tied sections) to a module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from audit.errors import ConfigError
from audit.registry import Registry
from audit.report.attacks import build_attacks
from audit.report.certificates import build_certificates
from audit.report.clean import build_clean, build_confusion
from audit.report.confidence import build_confidence
from audit.report.corruptions import build_corruptions
from audit.report.incidents import build_incidents
from audit.report.kinds import build_kinds
from audit.report.provenance import build_provenance
from audit.report.requirements import build_claims
from audit.report.risk import build_risk
from audit.report.scope import build_scope
from audit.report.signoff import build_conclusion, build_manifest, build_reproduction
from audit.report.summary import build_summary
from audit.report.user_tests import build_user_tests

SectionBuilder = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Section:
    """One block of the report: ``build(results)`` feeds ``template`` or hides the section."""

    key: str
    title: str
    template: str
    build: SectionBuilder


#: the report's sections in page order; third parties add one through the
#: ``segaudit.report_sections`` entry-point group (entry name = section key, value = Section)
SECTIONS: Registry[Section] = Registry(
    "report section", "segaudit.report_sections", name_of=lambda section: section.key
)
for _section in (
    Section("summary", "Summary", "_summary.html.j2", build_summary),
    Section("scope", "Identification and scope", "_scope.html.j2", build_scope),
    Section("claims", "Requirements and verdicts", "_claims.html.j2", build_claims),
    Section(
        "environment", "Environment and tool confidence", "_environment.html.j2", build_confidence
    ),
    Section("results", "Results by claim kind", "_kinds.html.j2", build_kinds),
    Section("clean", "Clean evaluation", "_clean.html.j2", build_clean),
    Section("confusion", "Confusion matrix", "_confusion.html.j2", build_confusion),
    Section("attacks", "Attacks", "_attacks.html.j2", build_attacks),
    Section("certificates", "Certificates", "_certificates.html.j2", build_certificates),
    Section("corruptions", "Corruptions", "_corruptions.html.j2", build_corruptions),
    Section("user-tests", "Your own tests", "_user_tests.html.j2", build_user_tests),
    Section("incidents", "Incidents and deviations", "_incidents.html.j2", build_incidents),
    Section(
        "residual-risk", "Residual risk and limits of the threat model", "_risk.html.j2", build_risk
    ),
    Section("conclusion", "Conclusion and sign-off", "_conclusion.html.j2", build_conclusion),
    Section("reproduction", "Annex A: reproduction", "_reproduction.html.j2", build_reproduction),
    Section("provenance", "Annex B: provenance", "_provenance.html.j2", build_provenance),
    Section("manifest", "Annex C: evidence manifest", "_manifest.html.j2", build_manifest),
):
    SECTIONS.register(_section)

_KEY_PATTERN = re.compile(r"[a-z][a-z0-9-]*")


def sections() -> tuple[Section, ...]:
    """The registered sections, in page order."""
    return tuple(section for _, section in SECTIONS.items())


def register_section(
    key: str,
    title: str,
    template: str,
    build: SectionBuilder,
    *,
    before: str | None = None,
    after: str | None = None,
) -> Section:
    """Add a section to every report rendered from now on.

    ``template`` names a partial in the templates folder; it sees the builder's result as
    ``ctx`` and may call ``embed_image(path, alt)`` for an image relative to the report folder
    (a thumbnail linked to the file) and ``image_link(path, text)`` for a link alone.
    The section goes at the end unless ``before`` or ``after`` names an existing key; new
    result sections usually belong ``before="incidents"`` (after the built-in results).
    """
    if not _KEY_PATTERN.fullmatch(key):
        raise ConfigError(
            "a section key must be lower-case letters, digits and dashes (it is an HTML id)",
            source="register_section",
            key=key,
        )
    if key in SECTIONS.names():
        raise ConfigError("a section with this key is already registered", key=key)
    anchor = before if before is not None else after
    if anchor is not None and anchor not in SECTIONS.names():
        keys = list(SECTIONS.names())
        raise ConfigError(f"no section {anchor!r} to place it next to; have {keys}", key=key)
    try:
        return SECTIONS.register(Section(key, title, template, build), before=before, after=after)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def unregister_section(key: str) -> None:
    """Remove a section added with :func:`register_section` (tests, plugins being unloaded)."""
    try:
        SECTIONS.unregister(key)
    except KeyError:
        raise ConfigError("no section with this key is registered", key=key) from None

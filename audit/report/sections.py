"""The report's sections: the :class:`Section` type and the ordered registry, built-ins first.

Each builder is a pure function from the results mapping to its partial's context, or ``None``
when the section has nothing to show.  Builders do all the defaulting and number formatting,
so partials only print ready-made strings.  The built-in builders live one section (or one
pair of closely tied sections) to a module: :mod:`~audit.report.summary`,
:mod:`~audit.report.clean`, :mod:`~audit.report.attacks`, :mod:`~audit.report.certificates`
and :mod:`~audit.report.provenance`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from audit.errors import ConfigError
from audit.report.attacks import build_attacks
from audit.report.certificates import build_certificates
from audit.report.clean import build_clean, build_confusion
from audit.report.provenance import build_provenance
from audit.report.summary import build_claims, build_summary

SectionBuilder = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Section:
    """One block of the report: ``build(results)`` feeds ``template`` or hides the section."""

    key: str
    title: str
    template: str
    build: SectionBuilder


_SECTIONS: list[Section] = [
    Section("summary", "Summary", "_summary.html.j2", build_summary),
    Section("claims", "Claims", "_claims.html.j2", build_claims),
    Section("clean", "Clean evaluation", "_clean.html.j2", build_clean),
    Section("confusion", "Confusion matrix", "_confusion.html.j2", build_confusion),
    Section("attacks", "Attacks", "_attacks.html.j2", build_attacks),
    Section("certificates", "Certificates", "_certificates.html.j2", build_certificates),
    Section("provenance", "Provenance", "_provenance.html.j2", build_provenance),
]

_KEY_PATTERN = re.compile(r"[a-z][a-z0-9-]*")


def sections() -> tuple[Section, ...]:
    """The registered sections, in page order."""
    return tuple(_SECTIONS)


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
    ``ctx`` and may call ``embed_image(path, alt)`` for an image relative to the report folder.
    The section goes at the end unless ``before`` or ``after`` names an existing key; new
    result sections usually belong ``before="provenance"``.
    """
    if not _KEY_PATTERN.fullmatch(key):
        raise ConfigError(
            "a section key must be lower-case letters, digits and dashes (it is an HTML id)",
            source="register_section",
            key=key,
        )
    if any(section.key == key for section in _SECTIONS):
        raise ConfigError("a section with this key is already registered", key=key)
    if before is not None and after is not None:
        raise ConfigError("give at most one of before= and after=", key=key)
    section = Section(key, title, template, build)
    anchor = before if before is not None else after
    if anchor is None:
        _SECTIONS.append(section)
        return section
    keys = [s.key for s in _SECTIONS]
    if anchor not in keys:
        raise ConfigError(f"no section {anchor!r} to place it next to; have {keys}", key=key)
    _SECTIONS.insert(keys.index(anchor) + (0 if before is not None else 1), section)
    return section


def unregister_section(key: str) -> None:
    """Remove a section added with :func:`register_section` (tests, plugins being unloaded)."""
    for index, section in enumerate(_SECTIONS):
        if section.key == key:
            del _SECTIONS[index]
            return
    raise ConfigError("no section with this key is registered", key=key)

"""Claim suites: TOML files turned into validated, frozen :class:`ClaimSpec` lists.

A malformed suite is reported at collection time, before any model loads (the claim kinds
it validates against import torch, but load no model or data).  Every error names the file,
the claim and the key.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from audit.claims import ClaimSpec, Threshold, Where, get_kind, known_kinds
from audit.claims.base import COMMON_KEYS, STATISTICS
from audit.claims.parsing import parse_tolerance
from audit.config import read_toml
from audit.errors import ConfigError
from audit.limits import check_ceilings, parse_timeout
from audit.resources import suites_dir

SUITE_KEYS = {
    "name": "the suite's name, used as the first part of each item's node id",
    "description": "what the suite is for",
    "model": "a table of model metadata (class_names, num_classes, ignore_index, mean, std, ...)",
    "claims": "the list of [[claims]] tables",
    "require_proof": "true: a claim whose value rests on something unproven (a claimed "
    "Lipschitz constant) fails (default false)",
    "intended_use": "what the model is for, in words (the report's scope section)",
    "operational_domain": "the conditions it is meant to work in: scenes, sensors, "
    "weather, lighting (the report's scope section)",
    "non_claims": "a list of what this suite explicitly does not claim (the report's "
    "scope and residual-risk sections)",
}
#: the suite keys that describe the audit's scope for a reviewer, not a claim
SCOPE_KEYS = ("intended_use", "operational_domain", "non_claims")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    claims: tuple[ClaimSpec, ...]
    model_metadata: Mapping[str, Any] = field(default_factory=dict)
    #: SHA-256 of the file's text, so that a comparison with a baseline run sees a changed suite
    sha256: str | None = None
    #: intended use, operational domain and non-claims, as the suite states them
    scope: Mapping[str, Any] = field(default_factory=dict)
    #: the file's bytes as read, so the record keeps the suite as run even if the file changes
    text: bytes | None = field(default=None, repr=False)

    @property
    def builtin(self) -> bool:
        """A suite shipped with SegAudit: its thresholds are placeholders, not requirements."""
        return self.path.resolve().parent == _builtin_dir()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path),
            "sha256": self.sha256,
            "builtin": self.builtin,
            **{key: self.scope[key] for key in SCOPE_KEYS if key in self.scope},
        }


def builtin_suites() -> dict[str, Path]:
    """Built-in suites by name."""
    return {p.stem: p for p in sorted(suites_dir().glob("*.toml"))}


def resolve_suite_ref(ref: str, *, base_dir: Path) -> Path:
    """A suite reference is a built-in name (``smoke``) or a path to a ``.toml`` file."""
    candidate = Path(ref)
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.is_file():
        return candidate.resolve()
    builtins = builtin_suites()
    if ref in builtins:
        return builtins[ref]
    raise ConfigError(
        f"no suite file {str(candidate)!r} and no built-in suite named {ref!r}; "
        f"built-in suites: {', '.join(builtins) or 'none'}",
        source="--audit-suite",
    )


def load_suite(ref: str | Path, *, base_dir: Path | None = None) -> Suite:
    """Read and validate a suite given by built-in name or path."""
    path = resolve_suite_ref(str(ref), base_dir=base_dir or Path.cwd())
    text = path.read_bytes()
    suite = parse_suite(read_toml(path), path=path)
    return replace(suite, sha256=hashlib.sha256(text).hexdigest(), text=text)


def _number(raw: Mapping[str, Any], key: str, where: Where) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise where.error(f"expected a number, got {value!r} ({type(value).__name__})", key=key)
    return float(value)


def parse_claim(raw: Any, *, suite: str, index: int, source: str) -> list[ClaimSpec]:
    """Validate one ``[[claims]]`` table; a sweep may expand it into several specs."""
    where = Where(source=source, claim=f"#{index + 1}")
    if not isinstance(raw, Mapping):
        raise where.error("each entry of 'claims' must be a table ([[claims]])")
    claim_id = raw.get("id")
    if not isinstance(claim_id, str) or not _ID_RE.match(claim_id):
        raise where.error(
            f"expected an id of letters, digits, '-', '_' or '.', got {claim_id!r}", key="id"
        )
    where = Where(source=source, claim=claim_id)
    kind_name = raw.get("kind")
    if not isinstance(kind_name, str):
        raise where.error(f"missing or not a string; kinds: {', '.join(known_kinds())}", "kind")
    try:
        kind = get_kind(kind_name)
    except KeyError:
        raise where.error(
            f"unknown kind {kind_name!r}; known kinds: {', '.join(known_kinds())}", key="kind"
        ) from None
    allowed = {**COMMON_KEYS, **kind.keys}
    for key in raw:
        if key not in allowed:
            raise where.error(
                f"unknown key for kind {kind_name!r}; accepted keys: {', '.join(allowed)}", key=key
            )
    statement = raw.get("statement", "")
    if not isinstance(statement, str):
        raise where.error(f"expected a string, got {statement!r}", key="statement")
    statistic = raw.get("statistic", "estimate")
    if statistic not in STATISTICS:
        raise where.error(
            f"expected one of {', '.join(STATISTICS)}, got {statistic!r}", key="statistic"
        )
    threshold = Threshold(min=_number(raw, "min", where), max=_number(raw, "max", where))
    origin = "suite"
    if threshold.min is None and threshold.max is None:
        if kind.default_threshold is None:
            raise where.error("missing threshold: give 'min' and/or 'max'", key="min")
        threshold = kind.default_threshold
        origin = "kind default"
    rationale = raw.get("rationale")
    if rationale is not None and (not isinstance(rationale, str) or not rationale.strip()):
        raise where.error(f"expected a non-empty string, got {rationale!r}", key="rationale")
    if kind.value_range is not None:
        low, high = kind.value_range
        for key, value in (("min", threshold.min), ("max", threshold.max)):
            if value is not None and not low <= value <= high:
                raise where.error(
                    f"{value:g} is out of range: {kind_name} claims measure values in "
                    f"[{low:g}, {high:g}]",
                    key=key,
                )
    if threshold.min is not None and threshold.max is not None and threshold.min > threshold.max:
        raise where.error(f"min {threshold.min:g} exceeds max {threshold.max:g}", key="min")
    # Before the kind's own checks, so a huge number is reported as what it is (too much
    # work) even where the kind would also refuse its type (steps = 1e9 is a float).
    check_ceilings(raw, where)
    params = kind.parse(raw, where)
    spec = ClaimSpec(
        suite=suite,
        id=claim_id,
        statement=statement or f"{kind_name} claim {claim_id}",
        kind=kind_name,
        params=params,
        threshold=threshold,
        statistic=statistic,
        source=source,
        timeout=parse_timeout(raw, where),
        tolerance=parse_tolerance(raw, where),
        rationale=rationale.strip() if rationale else None,
        threshold_source={"origin": origin, "where": source, "replaced": None},
    )
    return kind.expand(spec)


def parse_suite(data: Mapping[str, Any], *, path: Path) -> Suite:
    """Validate a parsed TOML document as a suite."""
    source = str(path)
    for key in data:
        if key not in SUITE_KEYS:
            raise ConfigError(
                f"unknown top-level key; accepted keys: {', '.join(SUITE_KEYS)}",
                source=source,
                key=key,
            )
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _ID_RE.match(name):
        raise ConfigError(
            f"expected a name of letters, digits, '-', '_' or '.', got {name!r}",
            source=source,
            key="name",
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(
            f"expected a string, got {description!r}", source=source, key="description"
        )
    model = data.get("model", {})
    if not isinstance(model, Mapping):
        raise ConfigError("expected a [model] table", source=source, key="model")
    require_proof = data.get("require_proof", False)
    if not isinstance(require_proof, bool):
        raise ConfigError(
            f"expected true or false, got {require_proof!r}", source=source, key="require_proof"
        )
    scope = _scope(data, source)
    raw_claims = data.get("claims")
    if not isinstance(raw_claims, list) or not raw_claims:
        raise ConfigError(
            "a suite needs at least one [[claims]] table", source=source, key="claims"
        )
    builtin = path.resolve().parent == _builtin_dir()
    claims: list[ClaimSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_claims):
        for spec in parse_claim(raw, suite=name, index=index, source=source):
            if spec.id in seen:
                raise ConfigError(
                    f"duplicate id (claims #{seen[spec.id] + 1} and #{index + 1})",
                    source=source,
                    claim=spec.id,
                    key="id",
                )
            seen[spec.id] = index
            if builtin and spec.threshold_source["origin"] == "suite":
                origin = {**spec.threshold_source, "origin": "built-in suite"}
                spec = replace(spec, threshold_source=origin)
            claims.append(replace(spec, require_proof=require_proof))
    return Suite(name, description, path, tuple(claims), dict(model), scope=scope)


def _builtin_dir() -> Path | None:
    try:
        return suites_dir().resolve()
    except FileNotFoundError:
        return None


def _scope(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The suite's intended use, operational domain and non-claims, checked."""
    scope: dict[str, Any] = {}
    for key in ("intended_use", "operational_domain"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"expected a non-empty string, got {value!r}", source=source, key=key)
        scope[key] = value.strip()
    non_claims = data.get("non_claims")
    if non_claims is not None:
        if isinstance(non_claims, str):
            non_claims = [non_claims]
        if not isinstance(non_claims, list) or not all(
            isinstance(item, str) and item.strip() for item in non_claims
        ):
            raise ConfigError(
                f"expected a list of non-empty strings, got {non_claims!r}",
                source=source,
                key="non_claims",
            )
        scope["non_claims"] = [item.strip() for item in non_claims]
    return scope


def override_thresholds(
    suite: Suite, thresholds: Mapping[str, Mapping[str, float]], *, source: str | None = None
) -> Suite:
    """The suite with thresholds replaced as the settings say (``thresholds`` setting).

    For each claim the most specific selector wins: the item's node id
    (``arnab2018::ifgsm[linf-4/255]``), then the claim's ``suite::id`` (every item of a
    sweep), then the bare id with or without the sweep suffix.  An override states the whole
    requirement: bounds it does not give are dropped.
    """
    if not thresholds:
        return suite
    claims = []
    for spec in suite.claims:
        base = spec.id.split("[", 1)[0]
        for selector in (spec.nodeid, f"{spec.suite}::{base}", spec.id, base):
            bounds = thresholds.get(selector)
            if bounds is not None:
                low, high = bounds.get("min"), bounds.get("max")
                if low is not None and high is not None and low > high:
                    raise ConfigError(
                        f"min {low:g} exceeds max {high:g}", source="thresholds", key=selector
                    )
                spec = replace(
                    spec,
                    threshold=Threshold(min=low, max=high),
                    threshold_source={
                        "origin": "override",
                        "where": f"{source or 'thresholds setting'}: {selector}",
                        "replaced": spec.threshold.to_dict(),
                    },
                )
                break
        claims.append(spec)
    return replace(suite, claims=tuple(claims))

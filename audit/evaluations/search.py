"""A Hypothesis search run programmatically: draw parameters, measure, steer, shrink, replay.

The claims' searches (``corruption_search``, ``invariance``) share this loop.  ``measure``
returns a score (higher is better for the model) and whether the example violates the claim;
:func:`hypothesis.target` steers towards low scores, a violation is shrunk by Hypothesis, and
the example database replays a stored violation first on the next run.  Everything each
example measured is kept, so the claim can name the shrunk one and the worst one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, target
from hypothesis import strategies as st
from hypothesis.database import ExampleDatabase

from audit.strategies import search_settings


@dataclass(frozen=True)
class Probe:
    """One example as measured: its parameters, score, whether it violates, and extras."""

    params: Any
    score: float
    violates: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchOutcome:
    tried: tuple[Probe, ...]
    #: the violation Hypothesis shrank to (the last violating example it ran), or None
    shrunk: Probe | None

    @property
    def first(self) -> Probe | None:
        return self.tried[0] if self.tried else None

    @property
    def worst(self) -> Probe | None:
        return min(self.tried, key=lambda p: p.score) if self.tried else None


class _Violation(AssertionError):
    """The example violates the claim: what Hypothesis shrinks."""


class _Abort(BaseException):
    """Anything else (a timeout, a model error) stops the search at once: a BaseException,
    so Hypothesis neither shrinks it nor stores it as a failing example."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def database_key(*parts: Any) -> bytes:
    """The example database's key of one search: the claim and its parameters (not the model:
    a failure found on one model is replayed first on the next, as a regression test)."""
    return hashlib.sha256(repr(parts).encode()).digest()


def run_search(
    strategy: st.SearchStrategy[Any],
    measure: Callable[[Any], Probe],
    *,
    max_examples: int,
    database: ExampleDatabase | None,
    key: bytes,
    seed_value: int,
) -> SearchOutcome:
    """Search ``strategy`` for an example ``measure`` finds violating; see the module."""
    tried: list[Probe] = []
    violations: list[Probe] = []

    def probe(params: Any) -> None:
        try:
            result = measure(params)
        except Exception as exc:
            raise _Abort(exc) from exc
        tried.append(result)
        target(-result.score, label="damage")
        if result.violates:
            violations.append(result)
            raise _Violation(repr(params))

    test = given(strategy)(probe)
    test = search_settings(max_examples=max_examples, database=database)(test)
    # Seeded from the audit's seed, so a run is deterministic for a fixed seed and database.
    # Not with ``hypothesis.seed``: it also turns the database off, and replaying a stored
    # failure first is the point of keeping one.
    test._hypothesis_internal_use_seed = seed_value  # type: ignore[attr-defined]
    # Hypothesis keys its database by the test function's source; every search runs this
    # same function, so each claim gets a key of its own.
    test._hypothesis_internal_database_key = key  # type: ignore[attr-defined]
    try:
        test()
    except _Violation:
        # The last violating example Hypothesis ran is the one it reports: the shrunk one.
        return SearchOutcome(tuple(tried), violations[-1])
    except _Abort as abort:
        raise abort.error from None
    except BaseException as exc:
        # A flaky violation (one that did not reproduce) still is one: report the last.
        if violations and isinstance(exc, Exception):
            return SearchOutcome(tuple(tried), violations[-1])
        raise
    return SearchOutcome(tuple(tried), None)

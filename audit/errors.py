"""One root exception, and one subclass per stage of the pipeline.

Every error SegAudit raises on purpose derives from :class:`SegAuditError`, so a
caller (the pytest plugin, a user's script) can tell "your input is wrong" from
"SegAudit crashed".  Messages name the file, claim, key or sample at fault.
"""

from __future__ import annotations


class SegAuditError(Exception):
    """Root of every error SegAudit raises deliberately."""


class ConfigError(SegAuditError, ValueError):
    """A setting, suite file or claim is malformed.

    ``source`` is the file (or ``"command line"``), ``claim`` the claim id and
    ``key`` the offending key, when known; the message already contains them.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        claim: str | None = None,
        key: str | None = None,
    ) -> None:
        where = []
        if source:
            where.append(str(source))
        if claim:
            where.append(f"claim {claim!r}")
        if key:
            where.append(f"key {key!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.source = source
        self.claim = claim
        self.key = key


class ModelError(SegAuditError):
    """The model file cannot be loaded, is refused, or does not fit the data."""


class OutOfDeviceMemory(ModelError):
    """The model ran out of device memory on a batch: the engine retries with smaller ones."""


class DataError(SegAuditError):
    """A dataset cannot be opened or one of its samples is unreadable."""


class EvaluationError(SegAuditError):
    """Evaluation produced something unusable (NaN logits, wrong shapes)."""


class AttackUnavailable(EvaluationError):
    """An attack's library is not installed or cannot run this attack: fails one claim only."""


class ClaimTimeout(EvaluationError):
    """A claim ran past its wall-clock budget (``timeout`` key or ``claim_timeout`` setting).

    ``progress`` says how far it got (evaluation, images and steps done, forward passes,
    evaluations completed), JSON-ready, so the record keeps what was measured.  The engine
    never caches it as an evaluation's result: a claim with a larger budget starts afresh.
    """

    def __init__(self, message: str, *, budget_s: float, elapsed_s: float, progress: dict) -> None:
        super().__init__(message)
        self.budget_s = budget_s
        self.elapsed_s = elapsed_s
        self.progress = progress


class ThreatOutOfRange(EvaluationError):
    """A radius larger than the images it applies to: the claim would say nothing."""


class InvalidRecord(SegAuditError):
    """A ``results.json`` record does not follow its JSON Schema.

    ``path`` is where the first error is (``claims["smoke::clean-miou"].verdict``), ``count``
    how many errors there are in all.
    """

    def __init__(self, message: str, *, path: str, count: int) -> None:
        super().__init__(message)
        self.path = path
        self.count = count


class RankError(SegAuditError):
    """A torchrun job's ranks cannot go on together: one failed to set up, died, or reached
    another evaluation; every rank raises it rather than wait in a collective."""

"""The contract every claim kind fulfils: parse its TOML keys, measure, and be judged.

A kind is a small class: ``keys`` it accepts beyond the common ones, ``parse`` to turn the
raw TOML table into canonical parameters (raising :class:`ConfigError` that names the
file, claim and key), optionally ``expand`` (one claim into several items, e.g. an
epsilon sweep), and ``measure`` that asks the engine for what it needs.  Comparing the
measurement with the threshold and wording the verdict is shared, here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from audit.errors import ConfigError
from audit.limits import LIMIT_KEYS

if TYPE_CHECKING:
    from audit.engine import Engine
    from audit.metrics import Interval

#: keys every claim may carry, whatever its kind
COMMON_KEYS: dict[str, str] = {
    "id": "a short identifier: letters, digits, '-', '_' or '.'",
    "statement": "the human-readable claim",
    "kind": "the claim kind",
    "min": "the lowest acceptable value (a number)",
    "max": "the highest acceptable value (a number)",
    "statistic": "'estimate' (default), 'ci_lower' or 'ci_upper': which value is compared",
    "tolerance": "how far the value may move against a baseline run and still count as "
    "unchanged (a number >= 0; default 0.005)",
    "rationale": "why the threshold is what it is (a requirement, a hazard analysis, a "
    "previous release); shown beside the threshold in the report",
    **LIMIT_KEYS,
}
STATISTICS = ("estimate", "ci_lower", "ci_upper")


def at_resolution(resolution: Sequence[int] | None) -> str:
    """`` at HxW`` for a claim's condition, or nothing when the images differ in size."""
    return f" at {resolution[0]}x{resolution[1]}" if resolution else ""


@dataclass(frozen=True)
class Where:
    """Location of a claim, for error messages."""

    source: str
    claim: str | None = None

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(message, source=self.source, claim=self.claim, key=key)


@dataclass(frozen=True)
class Threshold:
    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min:g} and {self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        return f"<= {self.max:g}"

    def to_dict(self) -> dict[str, float | None]:
        return {"min": self.min, "max": self.max}


@dataclass(frozen=True)
class ClaimSpec:
    """One claim as an item: validated, canonical, ready to measure."""

    suite: str
    id: str
    statement: str
    kind: str
    params: Mapping[str, Any]
    threshold: Threshold
    statistic: str
    source: str
    #: wall-clock budget in seconds (the claim's ``timeout`` key); ``None``: the setting's
    timeout: float | None = None
    #: a value that rests on something unproven fails the claim (``require_proof``)
    require_proof: bool = False
    #: how far the value may move against a baseline run (the ``tolerance`` key); ``None``:
    #: the comparison's default
    tolerance: float | None = None
    #: why the threshold is what it is (the ``rationale`` key), for the reviewer
    rationale: str | None = None
    #: where the threshold came from: ``origin`` is "suite", "built-in suite" (a placeholder
    #: to be replaced by the user's own requirement), "kind default" or "override";
    #: ``where`` names the file or option; an override keeps the ``replaced`` bounds
    threshold_source: Mapping[str, Any] = field(
        default_factory=lambda: {"origin": "suite", "where": None, "replaced": None}
    )

    @property
    def nodeid(self) -> str:
        return f"{self.suite}::{self.id}"


@dataclass(frozen=True)
class Measurement:
    """What a kind measured for one claim, before it is judged."""

    value: float
    #: the quantity in words, e.g. "mIoU" or "IoU of class 'car'"
    quantity: str
    #: the conditions in words, e.g. "clean" or "pgd linf eps=4/255, 20 steps"
    condition: str
    num_samples: int
    interval: Interval | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: arrays to keep next to the report (a counterexample's input and perturbation):
    #: file name -> array; the session saves them as ``.npy`` and lists them in the evidence
    artifacts: Mapping[str, Any] = field(default_factory=dict)
    #: what the value rests on that is not proven (a claimed Lipschitz constant), in words
    #: that complete "conditional on ..."; ``None`` when everything behind it is proven
    unproven: str | None = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    compared: float
    summary: str
    detail: str


def _compared(spec: ClaimSpec, m: Measurement) -> tuple[float, str]:
    """The value the threshold is compared with, and its name in words."""
    if spec.statistic == "estimate" or m.interval is None:
        return m.value, m.quantity
    side = "lower" if spec.statistic == "ci_lower" else "upper"
    compared = m.interval.low if side == "lower" else m.interval.high
    return compared, f"{side} {m.interval.confidence:.0%} bound of {m.quantity}"


def judge(spec: ClaimSpec, m: Measurement) -> Verdict:
    """Compare a measurement with the claim's threshold and word the outcome as sentences.

    The first line reads alone as pytest's short summary.
    """
    compared, which = _compared(spec, m)
    passed = spec.threshold.holds(compared)
    ci = ""
    if m.interval is not None:
        ci = f", {m.interval.confidence:.0%} CI {m.interval.low:.3f}-{m.interval.high:.3f}"
    sample_text = f"{m.num_samples} image{'s' if m.num_samples != 1 else ''}"
    if spec.statistic != "estimate" and m.interval is None:
        ci = ", no interval (too few images), so the estimate is compared"
    # A property of the model itself (a Lipschitz bound) is measured on no image.
    on = f" on {sample_text}" if m.num_samples else ""
    detail = (
        f"{which} {m.condition} is {compared:.3f}{ci}{on}; "
        f"claim requires {spec.threshold.describe()}"
    )
    if passed and m.unproven and spec.require_proof:
        passed = False
        summary = (
            f"claim {spec.id!r} violated: it is conditional on {m.unproven}, and proof is "
            f"required (require_proof); {which} {m.condition} is {compared:.3f}"
        )
    elif passed:
        summary = f"claim {spec.id!r} holds: {which} {compared:.3f} {spec.threshold.describe()}"
    else:
        summary = (
            f"claim {spec.id!r} violated: {which} {m.condition} is {compared:.3f}, "
            f"claim requires {spec.threshold.describe()}"
            + (f" ({sample_text}{ci})" if m.num_samples else "")
        )
    return Verdict(passed=passed, compared=compared, summary=summary, detail=detail)


def judge_regression(
    spec: ClaimSpec, m: Measurement, verdict: Verdict, row: Mapping[str, Any], *, note: str = ""
) -> Verdict:
    """The verdict of a claim that holds but regressed against a baseline run, for
    ``fail_on_regression``; ``row`` is its :func:`audit.record.baseline.compare_claim` row and
    ``note`` a caveat on the comparison (different data)."""
    _, which = _compared(spec, m)
    loss, tolerance = row["loss"], row["tolerance"]
    # as many decimals as it takes for the loss to read larger than the tolerance
    decimals = 3
    while decimals < 8 and round(loss, decimals) <= tolerance:
        decimals += 1
    summary = (
        f"claim {spec.id!r} regressed: {which} {m.condition} is {row['new']:.3f}, the baseline "
        f"run had {row['old']:.3f}: regressed by {loss:.{decimals}f} (tolerance {tolerance:g}); "
        f"its threshold ({spec.threshold.describe()}) holds" + (f"; {note}" if note else "")
    )
    return Verdict(passed=False, compared=verdict.compared, summary=summary, detail=verdict.detail)


class ClaimFailed(AssertionError):
    """A claim was measured and does not hold."""

    def __init__(self, verdict: Verdict, statement: str) -> None:
        super().__init__(f"{verdict.summary}\nclaimed: {statement}")
        self.verdict = verdict


def score_metric(
    spec: ClaimSpec, engine: Engine, per_image: Any, metric: str
) -> tuple[float, Interval | None]:
    """``metric`` of per-image confusion matrices and its interval; an unknown metric or
    class is an error naming the claim's file, id and ``metric`` key."""
    try:
        return engine.score(per_image, metric)
    except KeyError as exc:
        raise Where(spec.source, spec.id).error(exc.args[0], key="metric") from None


class ClaimKind(ABC):
    """Base class of claim kinds; subclasses register with :func:`audit.claims.register`."""

    #: the value of ``kind`` in a suite file
    name: ClassVar[str]
    #: accepted keys beyond :data:`COMMON_KEYS`, mapped to a description of their values
    keys: ClassVar[Mapping[str, str]] = {}
    #: the range a threshold may take, e.g. (0, 1) for scores; None for unbounded
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    #: the threshold when a claim gives neither ``min`` nor ``max`` (None: one is required)
    default_threshold: ClassVar[Threshold | None] = None

    @classmethod
    @abstractmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> dict[str, Any]:
        """Validate the kind's own keys of one claim table and return canonical parameters."""

    @classmethod
    def expand(cls, spec: ClaimSpec) -> list[ClaimSpec]:
        """One claim may become several items (a sweep); by default it stays one."""
        return [spec]

    @classmethod
    def check_classes(cls, spec: ClaimSpec, class_names: Sequence[str]) -> None:
        """Refuse a ``metric`` naming a class the model and data do not have (``class_iou:``,
        ``certified_class_iou:``), before any work; called once the class names are known."""
        metric = spec.params.get("metric")
        if not isinstance(metric, str) or ":" not in metric:
            return
        name = metric.partition(":")[2].strip()
        if name not in class_names:
            raise Where(spec.source, spec.id).error(
                f"unknown class {name!r} in metric {metric!r}; the classes are "
                + ", ".join(map(repr, class_names)),
                key="metric",
            )

    @classmethod
    @abstractmethod
    def measure(cls, spec: ClaimSpec, engine: Engine) -> Measurement:
        """Ask the engine for what the claim needs and return the measured value."""

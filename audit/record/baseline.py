"""An audit compared with a baseline run: what improved, regressed or stayed, and which inputs
changed in between.

Pure functions over records (``results.json`` read as dicts), torch-free: the session compares
each claim as it is judged and the whole record at the end; ``python -m audit compare`` compares
two files.  Claims are matched by node id, evaluations by their id in the record and a metric.

A claim's direction comes from its threshold: under a ``min`` higher is better, under a ``max``
lower is better, and between the two the margin to the nearer bound is what counts.  A change
counts only beyond the tolerance (absolute; the claim's ``tolerance`` key, else the default) and,
when the claim compares its point estimate and the baseline has a confidence interval, outside
that interval: two runs whose difference the baseline's own uncertainty covers have not shown
one model to be worse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import ConfigError
from audit.record.writer import SCHEMA_VERSION

DEFAULT_TOLERANCE = 0.005
IMPROVED, REGRESSED, UNCHANGED = "improved", "regressed", "unchanged"
NEW, REMOVED, UNMEASURED = "new", "removed", "unmeasured"
#: every status a row can have; ``unmeasured``: in both runs, without a value in one of them
#: (the claim errored, or did not run)
STATUSES = (REGRESSED, IMPROVED, UNCHANGED, NEW, REMOVED, UNMEASURED)
#: slack for values equal up to float rounding (0.555 - 0.55 is 0.0050000000000000044)
_EPS = 1e-12
_HIGHER, _LOWER = "higher", "lower"


@dataclass(frozen=True)
class Baseline:
    """A previous run's record, loaded and checked."""

    #: the ``results.json`` file read
    path: Path
    #: SHA-256 of the file's bytes: which baseline a comparison was made against
    sha256: str
    record: Mapping[str, Any]
    #: the record's claims by node id
    claims: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def load_baseline(path: str | Path, *, what: str = "baseline") -> Baseline:
    """The record at ``path``: a ``results.json`` file, or a report folder holding one.

    A missing file, invalid JSON or a file that is no audit record is a :class:`ConfigError`
    naming the file (as ``what``).
    """
    given = Path(path).expanduser()
    file = given / "results.json" if given.is_dir() else given
    source = f"{what} {file}"
    if not file.is_file():
        why = "the report folder holds no results.json" if given.is_dir() else "does not exist"
        raise ConfigError(
            f"{why}; expected the results.json of an audit, or its report folder",
            source=source,
        )
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=source) from None
    try:
        record = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not valid JSON ({exc.msg}, line {exc.lineno}); expected the results.json of an audit",
            source=source,
        ) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text, so not a results.json", source=source) from None
    if not isinstance(record, dict) or not isinstance(record.get("claims"), list):
        raise ConfigError(
            "not an audit record (no 'claims' list); expected the results.json of an audit",
            source=source,
        )
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"schema_version {record.get('schema_version')!r}, but this SegAudit reads "
            f"records of schema_version {SCHEMA_VERSION}",
            source=source,
        )
    claims = {}
    for entry in record["claims"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("nodeid"), str):
            raise ConfigError("a claim entry without a 'nodeid'", source=source)
        claims[entry["nodeid"]] = entry
    return Baseline(file.resolve(), hashlib.sha256(data).hexdigest(), record, claims)


# -- one value against another ------------------------------------------------------------


def number(value: Any) -> float | None:
    """``value`` as a float; ``None`` for anything else (missing, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


def _inside(value: float, interval: Any) -> bool:
    if not isinstance(interval, Mapping):
        return False
    low, high = number(interval.get("low")), number(interval.get("high"))
    return low is not None and high is not None and low - _EPS <= value <= high + _EPS


def _gain(old: float, new: float, better: str | tuple[float, float]) -> float:
    """How much better ``new`` is than ``old`` (negative: worse)."""
    if better == _HIGHER:
        return new - old
    if better == _LOWER:
        return old - new
    low, high = better

    def margin(value: float) -> float:
        return min(value - low, high - value)

    return margin(new) - margin(old)


def classify(
    old: float,
    new: float,
    *,
    better: str | tuple[float, float],
    tolerance: float,
    old_interval: Mapping[str, Any] | None = None,
    new_interval: Mapping[str, Any] | None = None,
) -> tuple[str, str | None]:
    """The status of a value that went from ``old`` to ``new``, and what kept it unchanged.

    ``better`` is ``"higher"``, ``"lower"`` or a ``(min, max)`` band (the farther inside the
    better).  Unchanged: within ``tolerance``, or inside the baseline's interval (or, when only
    the new run has one, the baseline's value inside the new interval).
    """
    gain = _gain(old, new, better)
    if abs(gain) <= tolerance + _EPS:
        return UNCHANGED, "tolerance"
    if _inside(new, old_interval) or (old_interval is None and _inside(old, new_interval)):
        return UNCHANGED, "interval"
    return (IMPROVED if gain > 0 else REGRESSED), None


def _direction(threshold: Any) -> str | tuple[float, float]:
    threshold = threshold if isinstance(threshold, Mapping) else {}
    low, high = number(threshold.get("min")), number(threshold.get("max"))
    if low is not None and high is not None:
        return (low, high)
    return _LOWER if high is not None and low is None else _HIGHER


def _describe_direction(better: str | tuple[float, float]) -> str:
    return better if isinstance(better, str) else f"inside [{better[0]:g}, {better[1]:g}]"


def _row(
    old: float | None,
    new: float | None,
    *,
    present: tuple[bool, bool],
    better: str | tuple[float, float],
    tolerance: float,
    intervals: tuple[Any, Any] = (None, None),
) -> dict[str, Any]:
    """Status, delta (new - old), how much worse (``loss``) and what kept it unchanged
    (``within``: "tolerance" or "interval"), for one value in two runs."""
    status, delta, loss, within = UNMEASURED, None, None, None
    if not present[0]:
        status = NEW
    elif not present[1]:
        status = REMOVED
    elif old is not None and new is not None:
        delta, loss = new - old, max(0.0, -_gain(old, new, better))
        old_iv, new_iv = (iv if isinstance(iv, Mapping) else None for iv in intervals)
        status, within = classify(
            old, new, better=better, tolerance=tolerance, old_interval=old_iv, new_interval=new_iv
        )
    return {
        "status": status,
        "old": old,
        "new": new,
        "delta": delta,
        "loss": loss,
        "within": within,
        "better": _describe_direction(better),
        "tolerance": tolerance,
    }


# -- claims -------------------------------------------------------------------------------


def _claim_value(entry: Mapping[str, Any] | None) -> float | None:
    """The value a claim was judged on (its ``compared``), else the measured estimate."""
    if entry is None:
        return None
    compared = number(entry.get("compared"))
    return compared if compared is not None else number(entry.get("measured"))


def _changed_terms(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The claim's terms that differ between the runs: the same node id measured otherwise."""
    changed = [k for k in ("kind", "metric", "statistic", "threshold") if old.get(k) != new.get(k)]
    old_params, new_params = old.get("params") or {}, new.get("params") or {}
    changed += sorted(
        f"params.{k}"
        for k in set(old_params) | set(new_params)
        if old_params.get(k) != new_params.get(k)
    )
    return changed


def compare_claim(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """One claim's row: ``old`` is the baseline's entry, ``new`` this run's (``None``: absent).

    The claim's own ``tolerance`` (this run's entry, else the baseline's) wins over
    ``tolerance``; the direction comes from this run's threshold.
    """
    if old is None and new is None:
        raise ValueError("compare_claim needs the claim in at least one run")
    current: Mapping[str, Any] = new if new is not None else old  # type: ignore[assignment]
    own = next(
        (t for e in (new, old) if e is not None and (t := number(e.get("tolerance"))) is not None),
        None,
    )
    # CIs bound the estimate: a claim judged on a CI bound moves with the CI's width.
    use_intervals = all(
        e is None or e.get("statistic", "estimate") == "estimate" for e in (old, new)
    )
    row = {
        "nodeid": current.get("nodeid"),
        "quantity": current.get("quantity"),
        "condition": current.get("condition"),
        **_row(
            _claim_value(old),
            _claim_value(new),
            present=(old is not None, new is not None),
            better=_direction(current.get("threshold")),
            tolerance=own if own is not None else tolerance,
            intervals=(
                (old.get("interval") if old and use_intervals else None),
                (new.get("interval") if new and use_intervals else None),
            ),
        ),
        "old_verdict": old.get("verdict") if old is not None else None,
        "new_verdict": new.get("verdict") if new is not None else None,
    }
    if old is not None and new is not None:
        row["changed_terms"] = _changed_terms(old, new)
    return row


# -- evaluations --------------------------------------------------------------------------

#: attack metrics compared, and which way is better
_ATTACK_METRICS = (("miou", _HIGHER), ("pixel_accuracy", _HIGHER), ("success_rate", _LOWER))


def evaluation_values(record: Mapping[str, Any]) -> Iterator[tuple[str, str, Any, str, Any]]:
    """``(evaluation id, metric, value, better, interval)`` for every number a record's
    evaluations hold that says how well the model did."""
    evaluations = record.get("evaluations") or {}
    clean = evaluations.get("clean") or {}
    intervals = clean.get("intervals") or {}
    for metric, value in (clean.get("metrics") or {}).items():
        yield "clean", metric, value, _HIGHER, intervals.get(metric)
    for entry in evaluations.get("attacks") or []:
        metrics = entry.get("metrics") or {}
        for metric, better in _ATTACK_METRICS:
            value = entry.get(metric) if metric == "success_rate" else metrics.get(metric)
            yield entry.get("id", "?"), metric, value, better, None
    for entry in evaluations.get("min_norm") or []:
        radius = (entry.get("image_radius") or {}).get("median")
        yield entry.get("id", "?"), "median_image_radius", radius, _HIGHER, None
    for entry in evaluations.get("certificates") or []:
        if entry.get("certifier") == "lipschitz":
            for radius, value in zip(
                entry.get("radii") or [], entry.get("certified_pixel_accuracy") or [], strict=False
            ):
                yield entry["id"], f"certified_pixel_accuracy@{radius:g}", value, _HIGHER, None
        else:
            for metric in ("certified_pixel_accuracy", "certified_miou"):
                yield entry.get("id", "?"), metric, entry.get(metric), _HIGHER, None
    for entry in evaluations.get("soundness") or []:
        yield f"soundness {entry.get('claim')}", "violations", entry.get("violations"), _LOWER, None


def compare_evaluations(
    old_record: Mapping[str, Any],
    new_record: Mapping[str, Any],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[dict[str, Any]]:
    """One row per evaluation and metric in either record, this run's order first."""
    old = {(e, m): (v, b, iv) for e, m, v, b, iv in evaluation_values(old_record)}
    new = {(e, m): (v, b, iv) for e, m, v, b, iv in evaluation_values(new_record)}
    rows = []
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key), new.get(key)
        better = (after if after is not None else before)[1]  # type: ignore[index]
        rows.append(
            {
                "evaluation": key[0],
                "metric": key[1],
                **_row(
                    number(before[0]) if before else None,
                    number(after[0]) if after else None,
                    present=(before is not None, after is not None),
                    better=better,
                    tolerance=tolerance,
                    intervals=(before[2] if before else None, after[2] if after else None),
                ),
            }
        )
    return rows


# -- inputs -------------------------------------------------------------------------------


_OTHER_IMAGES = "different data: the values were measured on other images"
_OTHER_COUNT = "a different number of images (limit)"


def _change(what: str, old: Any, new: Any, note: str) -> dict[str, Any]:
    return {"input": what, "old": old, "new": new, "note": note}


def input_changes(old_record: Mapping[str, Any], new_record: Mapping[str, Any]) -> list[dict]:
    """What differs between the runs' inputs: model file, data, number of images, seed, suite
    texts, library versions.  An input one record does not know (a model that never loaded) is
    not compared."""
    old_p, new_p = old_record.get("provenance") or {}, new_record.get("provenance") or {}
    old_model, new_model = old_p.get("model") or {}, new_p.get("model") or {}
    old_data, new_data = old_p.get("dataset") or {}, new_p.get("dataset") or {}
    candidates = [
        ("model", old_model.get("sha256"), new_model.get("sha256"), "a different model file"),
        ("data", old_data.get("fingerprint"), new_data.get("fingerprint"), _OTHER_IMAGES),
        ("samples", old_data.get("num_samples"), new_data.get("num_samples"), _OTHER_COUNT),
        ("seed", old_p.get("seed"), new_p.get("seed"), "random starts and intervals differ"),
    ]
    changes = [
        _change(what, a, b, note)
        for what, a, b, note in candidates
        if a is not None and b is not None and a != b
    ]
    old_suites = {s.get("name"): s.get("sha256") for s in old_record.get("suites") or []}
    new_suites = {s.get("name"): s.get("sha256") for s in new_record.get("suites") or []}
    for name in [*new_suites, *(n for n in old_suites if n not in new_suites)]:
        a, b = old_suites.get(name), new_suites.get(name)
        if name not in old_suites:
            changes.append(_change(f"suite {name}", None, b, "a suite the baseline did not run"))
        elif name not in new_suites:
            changes.append(_change(f"suite {name}", a, None, "a suite this run did not run"))
        elif a is not None and b is not None and a != b:
            changes.append(_change(f"suite {name}", a, b, "the suite file's text changed"))
    old_v, new_v = old_p.get("versions") or {}, new_p.get("versions") or {}
    for lib in [*new_v, *(k for k in old_v if k not in new_v)]:
        if lib in old_v and lib in new_v and old_v[lib] != new_v[lib]:
            changes.append(_change(lib, old_v[lib], new_v[lib], "a different library version"))
    return changes


# -- the whole comparison -----------------------------------------------------------------


def compare_records(
    baseline: Baseline, record: Mapping[str, Any], *, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, Any]:
    """``record`` (this run) against ``baseline``: the ``baseline`` block of ``results.json``."""
    changes = input_changes(baseline.record, record)
    new_claims = {c["nodeid"]: c for c in record.get("claims") or []}
    order = [*new_claims, *(n for n in baseline.claims if n not in new_claims)]
    claims = [
        compare_claim(baseline.claims.get(n), new_claims.get(n), tolerance=tolerance) for n in order
    ]
    changed = {c["input"] for c in changes}
    return {
        **baseline_header(baseline),
        "tolerance": tolerance,
        "input_changes": changes,
        "different_model": "model" in changed,
        "different_data": bool(changed & {"data", "samples"}),
        "counts": {s: sum(1 for c in claims if c["status"] == s) for s in STATUSES},
        "claims": claims,
        "evaluations": compare_evaluations(baseline.record, record, tolerance=tolerance),
    }


def baseline_header(baseline: Baseline) -> dict[str, Any]:
    """Which baseline, before anything is compared (the partial record during a run)."""
    provenance = baseline.record.get("provenance") or {}
    return {
        "path": str(baseline.path),
        "sha256": baseline.sha256,
        "started_at": provenance.get("started_at"),
        "complete": baseline.record.get("complete"),
    }

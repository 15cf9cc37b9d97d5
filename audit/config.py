"""Settings of one audit run, merged from ``[tool.segaudit]``, ``audit.toml`` and the command line.

Torch-free on purpose: ``pytest --help`` and collection errors must not pay for importing
torch.  Precedence, lowest first: defaults, ``pyproject.toml`` ``[tool.segaudit]``,
``audit.toml`` (top-level keys), command-line options.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from audit.errors import ConfigError

DEMO_MODEL = "demo"
DEFAULT_SUITE = "smoke"
DEFAULT_DATA = "synthetic"
DEFAULT_REPORT_DIR = "audit-report"
#: Hypothesis' example database of the searching claims, under the project root: a failure
#: found once is replayed first on the next run (``none`` turns it off)
DEFAULT_HYPOTHESIS_DB = Path(".segaudit/hypothesis")
#: values of the ``palette`` setting: the dataset's class colours, or a colour-blind safe set
#: (audit.record.images.COLORBLIND_PALETTE)
PALETTES = ("dataset", "colorblind")
#: values of the ``progress`` setting (audit.progress): ``auto`` is a live bar on a terminal,
#: plain lines elsewhere (a CI log), nothing under ``-qq``
PROGRESS_MODES = ("auto", "bar", "lines", "off")
#: values of the ``precision`` setting: the dtype the attacks' iterations run in under
#: autocast (certificates and soundness checks always run in full precision)
PRECISIONS = ("float32", "bfloat16", "float16")
#: object size buckets (audit.objects): an object is small below the first fraction of the
#: image's area, large at or above the second.  0.1% is about 46 x 46 pixels of a Cityscapes
#: frame (1024 x 2048), where distant pedestrians, poles and signs lie; 1% (145 x 145) holds
#: near cars and people.  One decade apart, so each bucket spans the same factor in area.
DEFAULT_SIZE_BUCKETS: tuple[float, float] = (0.001, 0.01)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass(frozen=True)
class Settings:
    """Everything an audit run needs to know before it loads anything.

    Paths are absolute once :func:`resolve_settings` has run.
    """

    model: str = DEMO_MODEL
    data: str = DEFAULT_DATA
    suites: tuple[str, ...] = (DEFAULT_SUITE,)
    report_dir: Path = Path(DEFAULT_REPORT_DIR)
    device: str = "auto"
    #: class colours of the drawn masks and the report: one of :data:`PALETTES`
    palette: str = "dataset"
    seed: int = 0
    limit: int | None = None
    batch_size: int = 8
    trust_pickle: bool = False
    #: every claim whose value rests on something unproven fails (suites can ask too)
    require_proof: bool = False
    factory: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    examples: int = 4
    #: object size buckets: area fractions (small below, large at or above); see
    #: :data:`DEFAULT_SIZE_BUCKETS`
    size_buckets: tuple[float, float] = DEFAULT_SIZE_BUCKETS
    #: wall-clock budget of every claim in seconds (a claim's ``timeout`` key wins); None: none
    claim_timeout: float | None = None
    #: a previous run's results.json (or its report folder) to compare this run with
    baseline: Path | None = None
    #: a claim that regressed against the baseline fails, even where its threshold holds
    fail_on_regression: bool = False
    #: where to write the run as a CTRF report (https://ctrf.io); None: not written
    ctrf: Path | None = None
    #: Hypothesis' example database folder of the searching claims; None: no database
    hypothesis_db: Path | None = DEFAULT_HYPOTHESIS_DB
    #: how long evaluations show their progress: one of :data:`PROGRESS_MODES`
    progress: str = "auto"
    #: folder of evaluations kept across runs (audit.store); None: nothing kept
    cache_dir: Path | None = None
    #: the attacks' iterations under autocast in this dtype: one of :data:`PRECISIONS`
    precision: str = "float32"
    #: processes loading the next batch's images while the device works (0: none)
    loader_workers: int = 0
    #: claim selector -> replacement threshold ({"min": x} and/or {"max": y}); a selector is
    #: an item's node id, ``suite::id`` of a sweep's claim, or a bare claim id
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    base_dir: Path = Path(".")
    invocation_dir: Path = Path(".")
    #: where each setting came from, for error messages: key -> "command line" / file path
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def uses_demo_model(self) -> bool:
        return self.model == DEMO_MODEL

    def base_for(self, key: str) -> Path:
        """Directory a relative path in setting ``key`` is relative to: the project root for
        a value from a config file, else the directory pytest was started in."""
        source = self.sources.get(key)
        return self.base_dir if source not in (None, "command line") else self.invocation_dir


#: file key -> (Settings field, expected type description)
FILE_KEYS: dict[str, str] = {
    "model": "model",
    "data": "data",
    "suites": "suites",
    "report": "report_dir",
    "device": "device",
    "palette": "palette",
    "seed": "seed",
    "limit": "limit",
    "batch_size": "batch_size",
    "trust_pickle": "trust_pickle",
    "require_proof": "require_proof",
    "factory": "factory",
    "metadata": "metadata",
    "bootstrap_resamples": "bootstrap_resamples",
    "confidence": "confidence",
    "examples": "examples",
    "size_buckets": "size_buckets",
    "thresholds": "thresholds",
    "claim_timeout": "claim_timeout",
    "baseline": "baseline",
    "fail_on_regression": "fail_on_regression",
    "ctrf": "ctrf",
    "hypothesis_db": "hypothesis_db",
    "progress": "progress",
    "cache": "cache_dir",
    "precision": "precision",
    "loader_workers": "loader_workers",
}


def _type_error(source: str, key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(
        f"expected {expected}, got {value!r} ({type(value).__name__})", source=source, key=key
    )


def _coerce(key: str, value: Any, source: str) -> Any:
    """Validate one setting's value and return it in its canonical type."""
    if key in ("model", "data", "factory"):
        if not isinstance(value, str) or not value:
            raise _type_error(source, key, "a non-empty string", value)
        if key == "factory" and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ConfigError(
                f"expected 'package.module:function', got {value!r}", source=source, key=key
            )
        return value
    if key == "suites":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise _type_error(source, key, "a suite name or path, or a list of them", value)
        return tuple(value)
    if key == "baseline":
        if not isinstance(value, str | Path) or not str(value):
            raise _type_error(source, key, "a results.json file or report folder", value)
        return Path(value)
    if key == "report":
        if not isinstance(value, str | Path) or not str(value):
            raise _type_error(source, key, "a directory path", value)
        return Path(value)
    if key == "ctrf":
        if not isinstance(value, str | Path) or not str(value):
            raise _type_error(source, key, "a file path", value)
        return Path(value)
    if key == "hypothesis_db":
        if not isinstance(value, str | Path) or not str(value):
            raise _type_error(source, key, "a directory path, or 'none'", value)
        return None if str(value).lower() == "none" else Path(value)
    if key == "cache":
        if not isinstance(value, str | Path) or not str(value):
            raise _type_error(source, key, "a directory path, or 'none'", value)
        return None if str(value).lower() == "none" else Path(value)
    if key == "device":
        if not isinstance(value, str) or not _DEVICE_RE.match(value):
            raise ConfigError(
                f"expected auto, cpu, cuda, cuda:<index> or mps, got {value!r}",
                source=source,
                key=key,
            )
        return value
    if key == "palette":
        if value not in PALETTES:
            raise ConfigError(
                f"expected {' or '.join(PALETTES)}, got {value!r}", source=source, key=key
            )
        return value
    if key in ("progress", "precision"):
        choices = PROGRESS_MODES if key == "progress" else PRECISIONS
        if value not in choices:
            expected = ", ".join(choices)
            raise ConfigError(f"expected {expected}, got {value!r}", source=source, key=key)
        return value
    if key in ("seed", "batch_size", "bootstrap_resamples", "examples", "limit", "loader_workers"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(source, key, "an integer", value)
        minimum = {
            "seed": 0,
            "batch_size": 1,
            "bootstrap_resamples": 0,
            "examples": 0,
            "loader_workers": 0,
        }.get(key, 1)
        if value < minimum:
            raise ConfigError(f"must be >= {minimum}, got {value}", source=source, key=key)
        return value
    if key in ("trust_pickle", "require_proof", "fail_on_regression"):
        if not isinstance(value, bool):
            raise _type_error(source, key, "true or false", value)
        return value
    if key == "confidence":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise _type_error(source, key, "a number between 0 and 1 (exclusive)", value)
        return float(value)
    if key == "size_buckets":
        return parse_size_buckets(value, source)
    if key == "metadata":
        if not isinstance(value, Mapping):
            raise _type_error(source, key, "a table of model metadata", value)
        return dict(value)
    if key == "thresholds":
        return parse_thresholds(value, source)
    if key == "claim_timeout":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise _type_error(source, key, "a number of seconds > 0", value)
        return float(value)
    raise AssertionError(f"unhandled setting {key}")  # FILE_KEYS and _coerce out of sync


def parse_size_buckets(value: Any, source: str) -> tuple[float, float]:
    """Two area fractions ``[small, large]`` with ``0 < small < large <= 1``; on the command
    line ``SMALL,LARGE`` (``0.001,0.01``)."""
    expected = "two area fractions [small, large] with 0 < small < large <= 1"
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or len(items) != 2:
        raise _type_error(source, "size_buckets", expected, value)
    numbers = []
    for item in items:
        if isinstance(item, bool):
            raise _type_error(source, "size_buckets", expected, value)
        try:
            number = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            raise _type_error(source, "size_buckets", expected, value) from None
        numbers.append(number)
    small, large = numbers
    # written to hold for NaN too: every comparison with NaN is false
    if not (0 < small < large <= 1):
        raise ConfigError(f"expected {expected}, got {value!r}", source=source, key="size_buckets")
    return small, large


def _threshold_number(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise _type_error(source, key, "a number", value)
    return float(value)


def parse_thresholds(value: Any, source: str) -> dict[str, dict[str, float]]:
    """``{selector: number}`` (a new ``min``) or ``{selector: {min = .., max = ..}}``.

    On the command line each ``--audit-threshold`` is ``SELECTOR=VALUE`` (a new min) or
    ``SELECTOR=max:VALUE``; they arrive here as a list of such strings.
    """
    if isinstance(value, list | tuple):
        table: dict[str, Any] = {}
        for item in value:
            selector, sep, raw = str(item).partition("=")
            bound, _, number = raw.rpartition(":")
            if not sep or not selector.strip() or bound not in ("", "min", "max"):
                raise ConfigError(
                    f"expected SELECTOR=VALUE or SELECTOR=max:VALUE, got {item!r}",
                    source=source,
                    key="thresholds",
                )
            try:
                parsed = float(number)
            except ValueError:
                raise ConfigError(
                    f"{item!r}: {number!r} is not a number", source=source, key="thresholds"
                ) from None
            table.setdefault(selector.strip(), {})[bound or "min"] = parsed
        value = table
    if not isinstance(value, Mapping):
        raise _type_error(source, "thresholds", "a table of claim selector = threshold", value)
    out: dict[str, dict[str, float]] = {}
    for selector, spec in value.items():
        key = f"thresholds.{selector}"
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"min", "max"}
            if unknown or not spec:
                raise ConfigError(
                    f"expected a table with min and/or max, got keys {sorted(spec)}",
                    source=source,
                    key=key,
                )
            out[selector] = {b: _threshold_number(v, source, key) for b, v in spec.items()}
        else:
            out[selector] = {"min": _threshold_number(spec, source, key)}
    return out


def settings_from_mapping(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Validate a ``[tool.segaudit]`` table (or ``audit.toml``) into Settings field values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FILE_KEYS:
            raise ConfigError(
                f"unknown setting; known settings are {', '.join(sorted(FILE_KEYS))}",
                source=source,
                key=key,
            )
        out[FILE_KEYS[key]] = _coerce(key, value, source)
    return out


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Why a TOML file was refused: TOML is UTF-8 by definition, and where it is not."""
    data = bytes(exc.object)
    line = data[: exc.start].count(b"\n") + 1
    return (
        f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}, offset {exc.start}): "
        "TOML files must be UTF-8; re-save the file as UTF-8"
    )


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``; an unreadable or malformed file is a :class:`ConfigError`
    naming it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(exc), source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc


def file_settings(rootdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings in ``rootdir/pyproject.toml`` and ``rootdir/audit.toml``, with their sources."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        table = read_toml(pyproject).get("tool", {}).get("segaudit")
        if table is not None:
            if not isinstance(table, Mapping):
                raise ConfigError("[tool.segaudit] must be a table", source=str(pyproject))
            found = settings_from_mapping(table, source=f"{pyproject} [tool.segaudit]")
            values.update(found)
            sources.update(dict.fromkeys(found, str(pyproject)))
    audit_toml = rootdir / "audit.toml"
    if audit_toml.is_file():
        found = settings_from_mapping(read_toml(audit_toml), source=str(audit_toml))
        values.update(found)
        sources.update(dict.fromkeys(found, str(audit_toml)))
    return values, sources


def resolve_settings(
    *,
    rootdir: Path,
    cli: Mapping[str, Any],
    invocation_dir: Path | None = None,
) -> Settings:
    """Merge defaults, config files under ``rootdir`` and command-line values (``None`` = unset).

    Relative paths from files resolve against ``rootdir``; from the command line (and
    defaults), against the directory pytest was started in.
    """
    invocation_dir = invocation_dir or Path.cwd()
    values, sources = file_settings(rootdir)
    for key, value in cli.items():
        if value is None or (key == "suites" and not value):
            continue
        file_key = next(k for k, f in FILE_KEYS.items() if f == key)
        coerced = _coerce(file_key, value, "command line")
        if key == "thresholds":
            # per selector: the command line wins, the files' other selectors stay
            coerced = {**values.get("thresholds", {}), **coerced}
        values[key] = coerced
        sources[key] = "command line"

    settings = replace(
        Settings(), **values, sources=sources, base_dir=rootdir, invocation_dir=invocation_dir
    )
    report_dir = settings.report_dir
    if not report_dir.is_absolute():
        report_dir = settings.base_for("report_dir") / report_dir
    model = settings.model
    if model != DEMO_MODEL and not Path(model).is_absolute():
        model = str(settings.base_for("model") / model)
    baseline = settings.baseline
    if baseline is not None and not baseline.is_absolute():
        baseline = (settings.base_for("baseline") / baseline).resolve()
    if settings.fail_on_regression and baseline is None:
        # A gate that silently gates nothing is worse than an error.
        raise ConfigError(
            "fail_on_regression is on but no baseline is given; pass --audit-baseline "
            "(a previous results.json or report folder)",
            source=settings.sources.get("fail_on_regression"),
            key="fail_on_regression",
        )
    ctrf = settings.ctrf
    if ctrf is not None and not ctrf.is_absolute():
        ctrf = (settings.base_for("ctrf") / ctrf).resolve()
    hypothesis_db = settings.hypothesis_db
    if hypothesis_db is not None and not hypothesis_db.is_absolute():
        # the default lives under the project root, wherever pytest was started
        base = rootdir if "hypothesis_db" not in sources else settings.base_for("hypothesis_db")
        hypothesis_db = (base / hypothesis_db).resolve()
    cache_dir = settings.cache_dir
    if cache_dir is not None and not cache_dir.is_absolute():
        cache_dir = (settings.base_for("cache_dir") / cache_dir).resolve()
    return replace(
        settings,
        report_dir=report_dir.resolve(),
        model=model,
        baseline=baseline,
        ctrf=ctrf,
        hypothesis_db=hypothesis_db,
        cache_dir=cache_dir,
    )


def read_metadata_file(value: str | None, invocation_dir: Path) -> dict[str, Any] | None:
    """The table of ``--audit-metadata FILE`` (TOML or JSON), relative to ``invocation_dir``."""
    if value is None:
        return None
    path = Path(value) if Path(value).is_absolute() else invocation_dir / value
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source="--audit-metadata") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid JSON/TOML: {exc}", source="--audit-metadata"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table/object", source="--audit-metadata")
    return data

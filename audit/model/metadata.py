"""What a model file says about itself: classes, input normalisation, claimed Lipschitz bound.

Metadata comes from an ``audit.json`` embedded in the model file and from the user's
configuration; both are validated key by key, so a typo or a wrong type is reported with the
file and key at fault instead of surfacing later as a shape error.  The user's own metadata is
strict (:meth:`ModelMetadata.from_mapping`); an embedded file's unknown keys are set aside
(:meth:`ModelMetadata.split_mapping`) and forgiven only where the user's metadata replaces
them (:func:`check_set_aside`), because the user may not be able to edit the model file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from audit.errors import ConfigError

# Where errors point when a ModelMetadata is built directly in Python code.
_DIRECT_SOURCE = "ModelMetadata"


@dataclass(frozen=True)
class ModelMetadata:
    """Facts about a model; ``None`` means "not stated"."""

    name: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    ignore_index: int | None = None
    #: input normalisation ``(x - mean) / std``, applied inside the wrapper so that attacks
    #: and epsilons live in [0, 1] image space
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    #: claimed L2 Lipschitz constant of the map image -> logits
    lipschitz: float | None = None
    lipschitz_source: str | None = None
    #: (H, W) the model was built for; informational only
    input_size: tuple[int, int] | None = None
    #: accept logits of any size and resize them to the input (bilinear); without it the
    #: wrapper accepts only logits at the input size divided by a whole number, because any
    #: other resize is a guess at how the model's grid maps onto the image
    accept_resize: bool | None = None

    def __post_init__(self) -> None:
        # Direct construction gets the same checks and coercions (lists -> tuples) as
        # from_mapping, so every ModelMetadata in flight is valid.
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in _validate(values, source=_DIRECT_SOURCE).items():
            object.__setattr__(self, key, value)

    @classmethod
    def known_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str) -> ModelMetadata:
        """Validate ``data`` (parsed JSON or TOML) and build metadata from it.

        ``source`` names where ``data`` came from (``"model.pt (audit.json)"``,
        ``"pyproject.toml [tool.segaudit.model]"``) and prefixes every error.
        """
        values, unknown = _split(data, source=source)
        if unknown:
            key = next(iter(unknown))
            raise ConfigError(_unknown_message(key), source=source, key=key)
        return cls(**_validate(values, source=source))

    @classmethod
    def split_mapping(
        cls, data: Mapping[str, Any], *, source: str
    ) -> tuple[ModelMetadata, dict[str, Any]]:
        """Like :meth:`from_mapping`, but unknown keys are returned aside instead of refused.

        For metadata embedded in a model file, which the user may not be able to edit: the
        known keys are validated as strictly, and :func:`check_set_aside` decides whether
        the user's own metadata makes up for the unknown ones.
        """
        values, unknown = _split(data, source=source)
        return cls(**_validate(values, source=source)), unknown

    def merged(self, override: ModelMetadata) -> ModelMetadata:
        """A copy where every field ``override`` sets (not ``None``) wins."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for f in fields(override):
            value = getattr(override, f.name)
            if value is not None:
                values[f.name] = value
        try:
            return ModelMetadata(**values)
        except ConfigError as exc:
            # Each side is valid alone; only the combination (e.g. 19 class names from one,
            # num_classes=21 from the other) can fail here.
            raise ConfigError(f"metadata and its override disagree: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists; unset fields are kept as ``None``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _split(data: Mapping[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known keys and their values, unknown keys and theirs), in the mapping's order."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"model metadata must be a table/object, got {type(data).__name__}", source=source
        )
    known = ModelMetadata.known_keys()
    values = {k: v for k, v in data.items() if isinstance(k, str) and k in known}
    unknown = {str(k): v for k, v in data.items() if not isinstance(k, str) or k not in known}
    return values, unknown


def replacements_for(key: str) -> tuple[str, ...]:
    """The known keys an unknown one resembles, best first (``classes`` -> ``num_classes``,
    ``class_names``: a tie, and either could be meant)."""
    return tuple(difflib.get_close_matches(key, ModelMetadata.known_keys(), n=3))


def _unknown_message(key: str) -> str:
    hints = replacements_for(key)
    did_you_mean = f" (did you mean {' or '.join(map(repr, hints))}?)" if hints else ""
    return f"unknown model metadata key{did_you_mean}; known keys are: " + ", ".join(
        ModelMetadata.known_keys()
    )


def check_set_aside(
    unknown: Mapping[str, Any], supplied: ModelMetadata | None, *, source: str
) -> dict[str, str]:
    """Accept embedded keys the harness does not know only where the user replaced them.

    An unknown key in a model's ``audit.json`` is forgiven when ``supplied`` (the user's
    metadata: command line, settings, suite tables) sets a known key it resembles, so
    ``classes`` in the file is answered by ``class_names`` from the user, and the file's
    value is ignored.  Any other unknown key may mean something the audit would get wrong
    without it (a normalisation under another name), so it stays an error, with the fix.
    Returns ``{unknown key: the user's key that replaces it}``, for the record.
    """
    replaced: dict[str, str] = {}
    for key in unknown:
        hints = replacements_for(key)
        given = [h for h in hints if supplied is not None and getattr(supplied, h) is not None]
        if given:
            replaced[key] = given[0]
            continue
        if hints:
            named = " or ".join(map(repr, hints))
            fix = (
                f"re-export the model with {named} in its audit.json, or supply {named} in "
                "your own metadata (--audit-metadata FILE, [tool.segaudit.metadata] in "
                f"pyproject.toml, or the suite's [model] table), which then replaces {key!r}"
            )
        else:
            fix = (
                "SegAudit cannot tell what it means and will not guess: re-export the "
                "model with an audit.json that uses only the known keys"
            )
        raise ConfigError(f"{_unknown_message(key)}; {fix}", source=source, key=key)
    return replaced


def _validate(values: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Check and coerce each known field; return the coerced values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = None if value is None else _COERCE[key](value, source, key)
    num_classes, class_names = out.get("num_classes"), out.get("class_names")
    if num_classes is not None and class_names is not None and len(class_names) != num_classes:
        raise ConfigError(
            f"expected {num_classes} class names (num_classes = {num_classes}), "
            f"got {len(class_names)}: {list(class_names)!r}",
            source=source,
            key="class_names",
        )
    return out


def _fail(source: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(
        f"expected {expected}, got {value!r} ({type(value).__name__})", source=source, key=key
    )


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `num_classes = true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _string(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str):
        raise _fail(source, key, "a string", value)
    return value


def _num_classes(value: Any, source: str, key: str) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(source, key, "an integer >= 1", value)
    return value


def _ignore_index(value: Any, source: str, key: str) -> int:
    if not _is_int(value):
        raise _fail(source, key, "an integer (e.g. 255 or -1)", value)
    return value


def _class_names(value: Any, source: str, key: str) -> tuple[str, ...]:
    expected = "a non-empty list of strings"
    if not isinstance(value, list | tuple) or not value:
        raise _fail(source, key, expected, value)
    if not all(isinstance(item, str) for item in value):
        raise _fail(source, key, expected, value)
    return tuple(value)


def _triple(*, positive: bool) -> Callable[[Any, str, str], tuple[float, float, float]]:
    expected = "a list of 3 " + ("positive numbers" if positive else "numbers")

    def coerce(value: Any, source: str, key: str) -> tuple[float, float, float]:
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise _fail(source, key, expected + " (one per RGB channel)", value)
        if not all(_is_number(v) and (v > 0 or not positive) for v in value):
            raise _fail(source, key, expected, value)
        return (float(value[0]), float(value[1]), float(value[2]))

    return coerce


def _lipschitz(value: Any, source: str, key: str) -> float:
    if not _is_number(value) or value <= 0:
        raise _fail(source, key, "a finite number > 0", value)
    return float(value)


def _flag(value: Any, source: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, key, "true or false", value)
    return value


def _input_size(value: Any, source: str, key: str) -> tuple[int, int]:
    expected = "[height, width] as two integers >= 1"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _fail(source, key, expected, value)
    if not all(_is_int(v) and v >= 1 for v in value):
        raise _fail(source, key, expected, value)
    return (value[0], value[1])


_COERCE: dict[str, Callable[[Any, str, str], Any]] = {
    "name": _string,
    "num_classes": _num_classes,
    "class_names": _class_names,
    "ignore_index": _ignore_index,
    "mean": _triple(positive=False),
    "std": _triple(positive=True),
    "lipschitz": _lipschitz,
    "lipschitz_source": _string,
    "input_size": _input_size,
    "accept_resize": _flag,
}

"""Parse ``--audit-data`` specs such as ``cityscapes:/data/cs?split=val&size=512x1024``.

Grammar: ``KIND[:PATH][?KEY=VALUE&KEY=VALUE...]``.  ``synthetic`` takes no path; the
file layouts require one, resolved against ``base_dir`` when relative.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audit.data.acdc import ACDCDataset
from audit.data.base import SegmentationDataset
from audit.data.cityscapes import CityscapesDataset
from audit.data.folder import FolderDataset
from audit.data.synthetic import SyntheticStreetScenes
from audit.data.voc import VOCDataset
from audit.errors import ConfigError

SOURCE = "--audit-data"
EXAMPLES = (
    "synthetic",
    "synthetic?n=32&seed=3&size=128x256",
    "cityscapes:/data/cityscapes?split=val&size=512x1024",
    "acdc:/data/acdc?condition=fog,night&split=val",
    "voc:/data/VOCdevkit/VOC2012?split=val",
    "folder:/data/mydata?images=img&masks=lbl",
)
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _error(message: str, key: str | None = None) -> ConfigError:
    return ConfigError(message, source=SOURCE, key=key)


def _int(key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _error(f"expected an integer >= {minimum}, got {value!r}", key) from None
    if number < minimum:
        raise _error(f"expected an integer >= {minimum}, got {value!r}", key)
    return number


def _size(key: str, value: str) -> tuple[int, int]:
    match = _SIZE.match(value)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise _error(f"expected HEIGHTxWIDTH such as 512x1024, got {value!r}", key)
    return int(match[1]), int(match[2])


def _text(key: str, value: str) -> str:
    if not value:
        raise _error("expected a non-empty value", key)
    return value


def _names(key: str, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(","))
    if not all(names):
        raise _error(f"expected comma-separated class names, got {value!r}", key)
    return names


# Per kind: option key -> (constructor argument, parser).
_Parser = Callable[[str, str], Any]
_OPTIONS: dict[str, dict[str, tuple[str, _Parser]]] = {
    "synthetic": {
        "n": ("num_samples", lambda k, v: _int(k, v, 1)),
        "seed": ("seed", lambda k, v: _int(k, v, 0)),
        "size": ("size", _size),
    },
    "cityscapes": {"split": ("split", _text), "size": ("size", _size)},
    "acdc": {
        "condition": ("conditions", _text),
        "split": ("split", _text),
        "size": ("size", _size),
    },
    "voc": {"split": ("split", _text), "size": ("size", _size)},
    "folder": {
        "images": ("images", _text),
        "masks": ("masks", _text),
        "classes": ("class_names", _names),
        "ignore_index": ("ignore_index", lambda k, v: _int(k, v, 0)),
        "size": ("size", _size),
    },
}


def _parse_query(query: str, accepted: dict[str, tuple[str, _Parser]], kind: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    seen: set[str] = set()
    for item in query.split("&"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise _error(f"option {item!r} has no value; write KEY=VALUE", key or None)
        if key not in accepted:
            keys = ", ".join(accepted)
            raise _error(f"unknown option for {kind!r} data; accepted keys: {keys}", key)
        if key in seen:
            raise _error("given twice", key)
        seen.add(key)
        argument, parse = accepted[key]
        kwargs[argument] = parse(key, value.strip())
    return kwargs


def open_dataset(
    spec: str,
    *,
    base_dir: Path | None = None,
    default_class_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    """Build the dataset a spec names; see the module docstring for the grammar.

    ``default_class_names`` (usually the model's declared ones) name the classes of a
    layout that does not name them itself: a folder without ``classes.txt`` or
    ``classes=``.  Layouts with fixed classes (synthetic, Cityscapes, ACDC, VOC) ignore it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _error(f"empty data spec; examples: {', '.join(EXAMPLES)}")
    head, _, query = spec.strip().partition("?")
    kind, colon, path = head.partition(":")
    kind = kind.strip().lower()
    if kind not in _OPTIONS:
        raise _error(
            f"unknown data kind {kind!r} in {spec!r}; accepted kinds: {', '.join(_OPTIONS)} "
            f"(examples: {', '.join(EXAMPLES)})",
            "kind",
        )
    kwargs = _parse_query(query, _OPTIONS[kind], kind)
    if kind == "folder" and default_class_names is not None:
        kwargs["default_class_names"] = default_class_names
    if kind == "synthetic":
        if colon:
            raise _error(f"synthetic data takes no path, got {path!r} in {spec!r}", "path")
    elif not path.strip():
        raise _error(f"{kind} data needs a path, as in {kind}:/path/to/data", "path")
    try:
        return _build(kind, path.strip(), kwargs, base_dir)
    except ConfigError as exc:
        # Constructor checks know the key but not that it came from the command line.
        message = str(exc)
        prefix = f"key {exc.key!r}: "
        if exc.key and exc.source is None and message.startswith(prefix):
            message = message[len(prefix) :]
        raise _error(message, exc.key) from exc


def data_root(spec: str, *, base_dir: Path | None = None) -> Path | None:
    """The folder a spec reads (None for synthetic data), without opening it: for checks
    that must fail before any work, such as a mistyped path."""
    head = spec.strip().partition("?")[0]
    kind, _, path = head.partition(":")
    if kind.strip().lower() == "synthetic" or not path.strip():
        return None
    return _root(path.strip(), base_dir)


def _root(path: str, base_dir: Path | None) -> Path:
    root = Path(path).expanduser()
    if not root.is_absolute():
        root = (base_dir if base_dir is not None else Path.cwd()) / root
    return root


def _build(
    kind: str, path: str, kwargs: dict[str, Any], base_dir: Path | None
) -> SegmentationDataset:
    if kind == "synthetic":
        return SyntheticStreetScenes(**kwargs)
    root = _root(path, base_dir)
    if kind == "cityscapes":
        return CityscapesDataset(root, **kwargs)
    if kind == "acdc":
        return ACDCDataset(root, **kwargs)
    if kind == "voc":
        return VOCDataset(root, **kwargs)
    return FolderDataset(root, **kwargs)

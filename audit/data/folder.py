"""A user's own data: an image folder and a mask folder matched by file stem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.data.io import IMAGE_SUFFIXES, check_size, require_dir
from audit.data.paired import PairedFileDataset
from audit.data.voc import voc_palette
from audit.errors import ConfigError, DataError

CLASSES_FILE = "classes.txt"
# How many orphan masks an error message names.
_SHOWN_FILES = 8


def _read_classes_file(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names from {path}: {exc}") from exc
    return tuple(line.strip() for line in lines if line.strip())


def _by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(f"{what} {found[path.stem]} and {path} share the stem {path.stem!r}")
        found[path.stem] = path
    return found


class FolderDataset(PairedFileDataset):
    """``root/<images>/<stem>.<ext>`` paired with ``root/<masks>/<stem>.png`` of class indices.

    Class names come from ``root/classes.txt`` (one per line) or ``class_names``; when
    neither exists, from ``default_class_names`` (the names the audited model declares).
    Every image needs a mask and every mask an image: a mask without its image is a sign
    of a broken export, not something to skip quietly.
    """

    kind = "folder"

    def __init__(
        self,
        root: str | Path,
        images: str = "images",
        masks: str = "masks",
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        size: tuple[int, int] | None = None,
        default_class_names: Sequence[str] | None = None,
    ) -> None:
        size = check_size(size)
        root = require_dir(Path(root).expanduser().resolve(), "dataset root")
        self.class_names, self.class_names_from = self._class_names(
            root, class_names, default_class_names
        )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"must be an integer, got {ignore_index!r}", key="ignore_index")
        if 0 <= ignore_index < len(self.class_names):
            raise ConfigError(
                f"{ignore_index} is the index of class {self.class_names[ignore_index]!r}; "
                f"choose a value outside [0, {len(self.class_names)})",
                key="ignore_index",
            )
        self.ignore_index = ignore_index
        self.palette = voc_palette(len(self.class_names))

        image_dir = require_dir(root / images, "image folder")
        mask_dir = require_dir(root / masks, "mask folder")
        image_files = _by_stem(image_dir, IMAGE_SUFFIXES, "images")
        mask_files = _by_stem(mask_dir, (".png",), "masks")
        pairs = []
        for stem, image in image_files.items():
            if stem not in mask_files:
                raise DataError(f"image {image} has no mask: expected {mask_dir / (stem + '.png')}")
            pairs.append((image, mask_files[stem]))
        if not pairs:
            raise DataError(
                f"image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        orphans = sorted(set(mask_files) - set(image_files))
        if orphans:
            shown = ", ".join(mask_files[stem].name for stem in orphans[:_SHOWN_FILES])
            more = f" and {len(orphans) - _SHOWN_FILES} more" if len(orphans) > _SHOWN_FILES else ""
            raise DataError(
                f"{len(orphans)} mask(s) in {mask_dir} have no image of the same stem in "
                f"{image_dir} ({', '.join(IMAGE_SUFFIXES)}): {shown}{more}; add their images "
                "or move the masks out, so that the audit covers the whole labelled set"
            )
        options = {
            "images": images,
            "masks": masks,
            "class_names": list(self.class_names),
            "ignore_index": ignore_index,
        }
        super().__init__(root, pairs, size=size, options=options)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "class_names_from": self.class_names_from}

    @staticmethod
    def _class_names(
        root: Path, given: Sequence[str] | None, default: Sequence[str] | None
    ) -> tuple[tuple[str, ...], str]:
        """The class names and where they came from (for the record)."""
        path = root / CLASSES_FILE
        from_file = _read_classes_file(path) if path.is_file() else None
        for value, key in ((given, "class_names"), (default, "default_class_names")):
            if value is not None and (
                isinstance(value, str) or not all(isinstance(n, str) for n in value)
            ):
                raise ConfigError(f"must be a list of strings, got {value!r}", key=key)
        from_arg = tuple(n.strip() for n in given) if given is not None else None
        if from_file is not None and from_arg is not None and from_file != from_arg:
            raise ConfigError(
                f"{path} lists {list(from_file)} but {list(from_arg)} were given; "
                "drop one or make them agree",
                key="class_names",
            )
        if from_file is not None:
            names, origin = from_file, str(path)
        elif from_arg is not None:
            names, origin = from_arg, "class_names"
        elif default is not None:
            names, origin = tuple(n.strip() for n in default), "the model's metadata"
        else:
            raise DataError(
                f"no class names for {root}: write {path} (one name per line), pass "
                "class_names (classes=a,b,c in the data spec), or declare class_names in "
                "the model's metadata"
            )
        if not names:
            raise DataError(f"no class names for {root}: {origin} is empty")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"class names for {root} (from {origin}) repeat {duplicates}")
        return names, origin

"""ACDC, the Adverse Conditions Dataset with Correspondences (Sakaridis et al., ICCV 2021).

Driving scenes in fog, at night, in rain and in snow, labelled with the 19 Cityscapes
classes.  The released archives ``rgb_anon_trainvaltest.zip`` and ``gt_trainval.zip`` unpack
to::

    rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png
    gt/<condition>/<split>/<sequence>/<name>_gt_labelTrainIds.png

The ground truth comes in three encodings side by side: ``_gt_labelIds.png`` (Cityscapes
label ids), ``_gt_labelTrainIds.png`` (train ids 0-18, 255 ignored) and ``_gt_invGray.png``
(the invalid-region masks of the uncertainty-aware benchmark).  This layout reads the
``labelTrainIds`` files: they hold the evaluated classes directly, so no remapping can go
wrong.  The ``<split>_ref`` folders (daytime reference images of the same places, images
only) are not samples and are never read.  The test split's labels are not public.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX
from audit.data.io import check_mask_values, check_size, check_split, require_dir
from audit.data.paired import PairedFileDataset
from audit.errors import ConfigError, DataError

#: ACDC's conditions, in the order samples are listed
ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")
IMAGE_SUFFIX = "_rgb_anon.png"
MASK_SUFFIX = "_gt_labelTrainIds.png"


def check_conditions(conditions: str | Sequence[str]) -> tuple[str, ...]:
    """``all``, one condition or several (a comma list or a sequence) -> the conditions in
    ACDC's order, so that two spellings of the same selection are the same dataset."""
    if isinstance(conditions, str):
        names = [c.strip().lower() for c in conditions.split(",")]
    else:
        names = [str(c).strip().lower() for c in conditions]
    if names == ["all"]:
        return ACDC_CONDITIONS
    unknown = [c for c in names if c not in ACDC_CONDITIONS]
    if unknown or not names:
        raise ConfigError(
            f"expected 'all' or one or more of {', '.join(ACDC_CONDITIONS)} (comma-separated), "
            f"got {conditions!r}",
            key="condition",
        )
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ConfigError(f"names {', '.join(repeated)} twice", key="condition")
    return tuple(c for c in ACDC_CONDITIONS if c in names)


class ACDCDataset(PairedFileDataset):
    """``root/rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png`` with
    ``gt/.../*_gt_labelTrainIds.png`` masks; samples are named ``<condition>/<sequence>/<name>``."""

    kind = "acdc"
    class_names = CITYSCAPES_CLASSES
    ignore_index = IGNORE_INDEX
    palette = CITYSCAPES_PALETTE

    def __init__(
        self,
        root: str | Path,
        conditions: str | Sequence[str] = "all",
        split: str = "val",
        size: tuple[int, int] | None = None,
    ) -> None:
        chosen = check_conditions(conditions)
        split = check_split(split)
        size = check_size(size)
        root = require_dir(Path(root).expanduser().resolve(), "ACDC root")
        require_dir(root / "rgb_anon", "ACDC image folder")
        pairs: list[tuple[Path, Path]] = []
        self._conditions_of: list[str] = []
        for condition in chosen:
            found = _condition_pairs(root, condition, split)
            pairs += found
            self._conditions_of += [condition] * len(found)
        self.conditions = chosen
        super().__init__(
            root, pairs, size=size, options={"conditions": list(chosen), "split": split}
        )

    def condition(self, index: int) -> str | None:
        return self._conditions_of[index]

    def _name(self, path: Path) -> str:
        # rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png -> condition/sequence/name
        condition, _split, sequence, filename = path.relative_to(self.root / "rgb_anon").parts
        return f"{condition}/{sequence}/{filename[: -len(IMAGE_SUFFIX)]}"

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_mask_values(raw, self.num_classes, self.ignore_index, path)
        return raw

    def describe(self) -> dict[str, Any]:
        counts = {c: self._conditions_of.count(c) for c in self.conditions}
        return {**super().describe(), "samples_per_condition": counts}


def _condition_pairs(root: Path, condition: str, split: str) -> list[tuple[Path, Path]]:
    image_dir = require_dir(root / "rgb_anon" / condition / split, "ACDC image folder")
    mask_dir = root / "gt" / condition / split
    if not mask_dir.is_dir():
        if split == "test":
            raise DataError(
                f"ACDC split 'test' has no public labels ({mask_dir} does not exist; "
                "gt_trainval.zip holds train and val only): use split=val or split=train"
            )
        require_dir(mask_dir, "ACDC annotation folder")
    pairs: list[tuple[Path, Path]] = []
    for sequence in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for image in sorted(sequence.glob("*" + IMAGE_SUFFIX)):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            mask = mask_dir / sequence.name / (stem + MASK_SUFFIX)
            if not mask.is_file():
                raise DataError(f"image {image} has no annotation: expected {mask}")
            pairs.append((image, mask))
    # A label whose image is missing (an archive unpacked halfway) would silently shrink
    # the audited set: it is named instead.
    for mask in sorted(mask_dir.glob("*/*" + MASK_SUFFIX)):
        stem = mask.name[: -len(MASK_SUFFIX)]
        image = image_dir / mask.parent.name / (stem + IMAGE_SUFFIX)
        if not image.is_file():
            raise DataError(f"annotation {mask} has no image: expected {image}")
    if not pairs:
        raise DataError(
            f"ACDC condition {condition!r}, split {split!r} is empty: no "
            f"<sequence>/*{IMAGE_SUFFIX} under {image_dir}"
        )
    return pairs

"""Cityscapes fine annotations, mapped to the 19 classes of the official benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.data.io import check_size, check_split, require_dir
from audit.data.paired import PairedFileDataset
from audit.errors import DataError

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
#: labelId -> trainId for the evaluated classes (cityscapesScripts' labels.py)
LABEL_TO_TRAIN: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
IGNORE_INDEX = 255

# labelIds PNGs are 8-bit, so a 256-entry table maps every possible value in one gather.
_LUT = np.full(256, IGNORE_INDEX, dtype=np.int64)
_LUT[list(LABEL_TO_TRAIN)] = list(LABEL_TO_TRAIN.values())

_IMAGE_SUFFIX = "_leftImg8bit.png"
_MASK_SUFFIX = "_gtFine_labelIds.png"


class CityscapesDataset(PairedFileDataset):
    """``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine`` labelIds masks."""

    kind = "cityscapes"
    class_names = CITYSCAPES_CLASSES
    ignore_index = IGNORE_INDEX
    palette = CITYSCAPES_PALETTE

    def __init__(
        self, root: str | Path, split: str = "val", size: tuple[int, int] | None = None
    ) -> None:
        split = check_split(split)
        size = check_size(size)
        root = require_dir(Path(root).expanduser().resolve(), "Cityscapes root")
        image_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes image folder")
        mask_dir = require_dir(root / "gtFine" / split, "Cityscapes annotation folder")
        pairs: list[tuple[Path, Path]] = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in sorted(city.glob("*" + _IMAGE_SUFFIX)):
                stem = image.name[: -len(_IMAGE_SUFFIX)]
                mask = mask_dir / city.name / (stem + _MASK_SUFFIX)
                if not mask.is_file():
                    raise DataError(f"image {image} has no annotation: expected {mask}")
                pairs.append((image, mask))
        if not pairs:
            raise DataError(
                f"Cityscapes split {split!r} is empty: no <city>/*{_IMAGE_SUFFIX} under {image_dir}"
            )
        super().__init__(root, pairs, size=size, options={"split": split})

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DataError(
                f"mask {path} holds values up to {raw.max()}; labelIds masks are 8-bit (0-33)"
            )
        return _LUT[raw]

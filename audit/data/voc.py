"""PASCAL VOC 2012 segmentation: JPEG images and palette-PNG class masks."""

from __future__ import annotations

from pathlib import Path

from audit.data.io import check_size, check_split, require_dir
from audit.data.paired import PairedFileDataset
from audit.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IGNORE_INDEX = 255


def voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The VOC colour map: the bits of the class index spread over R, G, B, high bits first."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def _find_voc_dir(root: Path) -> Path:
    """Accept the VOC2012 folder itself or the VOCdevkit folder above it."""
    for candidate in (root, root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(
        f"{root} is not a VOC2012 folder: found neither {root / 'JPEGImages'} "
        f"nor {root / 'VOC2012' / 'JPEGImages'}"
    )


class VOCDataset(PairedFileDataset):
    """The images listed in ``ImageSets/Segmentation/<split>.txt``, 21 classes, 255 = border."""

    kind = "voc"
    class_names = VOC_CLASSES
    ignore_index = IGNORE_INDEX
    palette = voc_palette(len(VOC_CLASSES))

    def __init__(
        self, root: str | Path, split: str = "val", size: tuple[int, int] | None = None
    ) -> None:
        split = check_split(split)
        size = check_size(size)
        voc = _find_voc_dir(require_dir(Path(root).expanduser().resolve(), "VOC root"))
        mask_dir = require_dir(voc / "SegmentationClass", "VOC annotation folder")
        list_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        try:
            ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            raise DataError(f"VOC split file {list_file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read VOC split file {list_file}: {exc}") from exc
        if not ids:
            raise DataError(f"VOC split file {list_file} lists no images")
        pairs = []
        for image_id in ids:
            image = voc / "JPEGImages" / f"{image_id}.jpg"
            mask = mask_dir / f"{image_id}.png"
            if not image.is_file():
                raise DataError(f"{list_file} lists {image_id!r} but {image} is missing")
            if not mask.is_file():
                raise DataError(f"image {image} has no annotation: expected {mask}")
            pairs.append((image, mask))
        super().__init__(voc, pairs, size=size, options={"split": split})

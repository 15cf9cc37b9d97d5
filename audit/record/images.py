"""Example images for the report: inputs, ground truths and predictions as PNG files.

The files are the full-resolution evidence; the report embeds thumbnails of a few and links
all of them.  An image that is the same in every evaluation (an input, its ground truth, the
clean prediction) is written once, under ``examples/`` with its content digest in the name,
and every entry that shows it names that file: an audit with 40 attack evaluations used to
write the same input 40 times.  Masks are palette PNGs (one byte a pixel instead of three).
PNGs are written at zlib level 1: deflate gains little on photographs at any level, and
``optimize=True`` (level 9 plus a search over filters) made writing the examples of an
``arnab2018`` run take longer than rendering its whole report.

Class colours come from the ``palette`` setting (:func:`class_palette`): ``"dataset"`` keeps
the dataset's own colours, ``"colorblind"`` uses :data:`COLORBLIND_PALETTE`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from audit.config import PALETTES
from audit.evaluations.attack import AdversarialExample
from audit.evaluations.clean import Example

#: colour of ignored pixels in drawn masks
IGNORE_COLOUR = (0, 0, 0)
#: folder, inside the report folder, of the images shared between evaluations
SHARED_FOLDER = "examples"
#: zlib level of the PNG files (see the module docstring)
PNG_COMPRESS_LEVEL = 1

#: Okabe & Ito's categorical palette without its black (the colour of ignored pixels) and a
#: light grey in its place.  Under simulated deuteranopia (Machado et al. 2009, severity 1)
#: every two of these differ by CIEDE2000 > 11.5 (orange / yellow is the closest pair;
#: tests/test_report_plots.py measures it); the dataset palette of the synthetic street
#: scenes has person / vegetation at 2.6.
COLORBLIND_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (221, 221, 221),  # light grey
)
#: Beyond 8 classes no set of hues stays apart under colour-vision deficiency, so classes 9-16
#: reuse the 8 hues darkened (x 0.55) and classes 17-24 lightened (55 % towards white): the
#: closest pair is then CIEDE2000 7.5 (16 classes) and 4.1 (24), still above the dataset
#: palette's 2.6; past 24 the tiers repeat.  Read those by their lightness, not their hue.
_TIERS = (("solid", 0.0), ("dark", 0.55), ("light", 0.55))


def _tier_colour(base: tuple[int, int, int], tier: int) -> tuple[int, int, int]:
    kind, factor = _TIERS[tier % len(_TIERS)]
    if kind == "dark":
        return (round(base[0] * factor), round(base[1] * factor), round(base[2] * factor))
    if kind == "light":
        return (
            round(base[0] + (255 - base[0]) * factor),
            round(base[1] + (255 - base[1]) * factor),
            round(base[2] + (255 - base[2]) * factor),
        )
    return base


def colorblind_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """:data:`COLORBLIND_PALETTE` for ``num_classes`` classes, extended by lightness tiers."""
    size = len(COLORBLIND_PALETTE)
    return tuple(_tier_colour(COLORBLIND_PALETTE[k % size], k // size) for k in range(num_classes))


def class_palette(
    name: str, dataset_palette: Sequence[Sequence[int]]
) -> tuple[tuple[int, int, int], ...]:
    """The class colours of setting ``palette`` = ``name`` for a dataset with these colours."""
    if name == "colorblind":
        return colorblind_palette(len(dataset_palette))
    if name != "dataset":
        raise ValueError(f"unknown palette {name!r}; expected one of {', '.join(PALETTES)}")
    return tuple((int(c[0]), int(c[1]), int(c[2])) for c in dataset_palette)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int) -> np.ndarray:
    """Class indices H x W -> RGB H x W x 3 uint8 using the dataset palette."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOUR
    for k, colour in enumerate(palette[:256]):
        lut[k] = colour
    safe = np.where((mask >= 0) & (mask < 256), mask, ignore_index if ignore_index < 256 else 0)
    rgb = lut[safe.astype(np.int64)]
    rgb[mask == ignore_index] = IGNORE_COLOUR
    return rgb


def label_image(
    mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int
) -> Image.Image:
    """A mask as a palette image drawing what :func:`colorize` draws: ignored pixels and
    labels without a colour in :data:`IGNORE_COLOUR`.  RGB when the palette leaves no spare
    entry for them."""
    if len(palette) > 255:
        return Image.fromarray(colorize(mask, palette, ignore_index))
    spare = len(palette)
    labels = np.asarray(mask).astype(np.int64)
    known = (labels >= 0) & (labels < spare) & (labels != ignore_index)
    image = Image.fromarray(np.where(known, labels, spare).astype(np.uint8))
    colours = [tuple(int(c) for c in colour) for colour in palette] + [IGNORE_COLOUR]
    image.putpalette([channel for colour in colours for channel in colour])
    return image


def _save(image: Image.Image, path: Path) -> None:
    # Written aside and moved into place: a shared file is reused by name, so a file cut
    # short by a crash must never be left under that name.
    temp = path.with_name(f".{path.name}.tmp")
    image.save(temp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(temp, path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:80] or "image"


def save_shared(report_dir: Path, name: str, role: str, image: Image.Image) -> str:
    """Write ``image`` once as ``examples/<name>-<role>-<digest>.png``; return that path,
    relative to the report folder.  The digest covers the pixels and the palette, so equal
    images share a file and different ones never do."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode} {image.size}".encode())
    digest.update(image.tobytes())
    if image.mode == "P":
        digest.update(bytes(image.getpalette() or ()))
    relative = f"{SHARED_FOLDER}/{_slug(name)}-{role}-{digest.hexdigest()[:12]}.png"
    path = report_dir / relative
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(image, path)
    return relative


def write_examples(
    report_dir: Path,
    examples: Sequence[Example],
    *,
    palette: Sequence[Sequence[int]],
    ignore_index: int,
) -> list[dict[str, Any]]:
    """Write each clean example's input, ground truth and prediction (shared files, see
    :func:`save_shared`); return the record's entries."""
    entries = []
    for ex in examples:
        entries.append(
            {
                "name": ex.name,
                "pixel_accuracy": ex.pixel_accuracy,
                "image": save_shared(report_dir, ex.name, "input", Image.fromarray(ex.image)),
                "ground_truth": save_shared(
                    report_dir, ex.name, "gt", label_image(ex.mask, palette, ignore_index)
                ),
                "prediction": save_shared(
                    report_dir, ex.name, "pred", label_image(ex.prediction, palette, ignore_index)
                ),
            }
        )
    return entries


def write_adversarial_examples(
    report_dir: Path,
    evaluation_id: str,
    examples: Sequence[AdversarialExample],
    *,
    palette: Sequence[Sequence[int]],
    ignore_index: int,
) -> list[dict[str, Any]]:
    """Write each attacked example's images: the input, ground truth and clean prediction
    shared with every other evaluation (:func:`save_shared`), the adversarial input,
    perturbation and adversarial prediction under ``attacks/<id>/``."""
    folder = report_dir / "attacks" / evaluation_id
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, ex in enumerate(examples):
        entry: dict[str, Any] = {
            "name": ex.name,
            "pixel_accuracy_clean": ex.pixel_accuracy_clean,
            "pixel_accuracy_adv": ex.pixel_accuracy_adv,
        }
        # (key, file role, image, shared by every evaluation that shows this sample)
        cells = (
            ("image", "input", Image.fromarray(ex.image), True),
            ("adversarial", "adv", Image.fromarray(ex.adversarial), False),
            ("perturbation", "delta", Image.fromarray(ex.perturbation), False),
            ("ground_truth", "gt", label_image(ex.mask, palette, ignore_index), True),
            (
                "prediction_clean",
                "pred",
                label_image(ex.prediction_clean, palette, ignore_index),
                True,
            ),
            (
                "prediction_adv",
                "pred-adv",
                label_image(ex.prediction_adv, palette, ignore_index),
                False,
            ),
        )
        for key, role, image, shared in cells:
            if shared:
                entry[key] = save_shared(report_dir, ex.name, role, image)
            else:
                _save(image, folder / f"{i}-{role}.png")
                entry[key] = f"attacks/{evaluation_id}/{i}-{role}.png"
        entries.append(entry)
    return entries

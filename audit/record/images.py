"""Example images for the report: input, ground truth and prediction as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from audit.evaluations.attack import AdversarialExample
from audit.evaluations.clean import Example

#: colour of ignored pixels in drawn masks
IGNORE_COLOUR = (0, 0, 0)


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


def write_examples(
    report_dir: Path,
    examples: Sequence[Example],
    *,
    palette: Sequence[Sequence[int]],
    ignore_index: int,
    prefix: str = "clean",
) -> list[dict[str, Any]]:
    """Write each example's three images under ``report_dir/examples``; return results entries."""
    folder = report_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, ex in enumerate(examples):
        stem = f"{prefix}-{i:03d}"
        files = {
            "image": (f"{stem}-input.png", ex.image),
            "ground_truth": (f"{stem}-gt.png", colorize(ex.mask, palette, ignore_index)),
            "prediction": (f"{stem}-pred.png", colorize(ex.prediction, palette, ignore_index)),
        }
        entry: dict[str, Any] = {"name": ex.name, "pixel_accuracy": ex.pixel_accuracy}
        for key, (filename, array) in files.items():
            Image.fromarray(array).save(folder / filename, optimize=True)
            entry[key] = f"examples/{filename}"
        entries.append(entry)
    return entries


def write_adversarial_examples(
    report_dir: Path,
    evaluation_id: str,
    examples: Sequence[AdversarialExample],
    *,
    palette: Sequence[Sequence[int]],
    ignore_index: int,
) -> list[dict[str, Any]]:
    """Write each attacked example's six images under ``report_dir/attacks/<id>``."""
    folder = report_dir / "attacks" / evaluation_id
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, ex in enumerate(examples):
        files = {
            "image": ("image", ex.image),
            "adversarial": ("adv", ex.adversarial),
            "perturbation": ("delta", ex.perturbation),
            "ground_truth": ("gt", colorize(ex.mask, palette, ignore_index)),
            "prediction_clean": ("pred", colorize(ex.prediction_clean, palette, ignore_index)),
            "prediction_adv": ("pred-adv", colorize(ex.prediction_adv, palette, ignore_index)),
        }
        entry: dict[str, Any] = {
            "name": ex.name,
            "pixel_accuracy_clean": ex.pixel_accuracy_clean,
            "pixel_accuracy_adv": ex.pixel_accuracy_adv,
        }
        for key, (suffix, array) in files.items():
            filename = f"{i}-{suffix}.png"
            Image.fromarray(array).save(folder / filename, optimize=True)
            entry[key] = f"attacks/{evaluation_id}/{filename}"
        entries.append(entry)
    return entries

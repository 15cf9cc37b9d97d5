"""The report's size budget, its determinism, and the images behind both (issue 11).

The page of an ``arnab2018`` + ``massena2025`` run on 8 images is at most 5 MB: every
distinct image embedded once, as a thumbnail, and a fixed gallery of worst examples per
evaluation, so the page does not grow with the number of images audited (bench/report.py
renders a 500-image record too, and times both).  Sizes are deterministic, so they are
asserted; times are not.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from report_helpers import drawn_images, fabricate_record

from audit.data.synthetic import STREET_PALETTE
from audit.evaluations.attack import AdversarialExample
from audit.record.images import colorize, label_image, write_adversarial_examples
from audit.report import render_html, render_report
from audit.report.attacks import GALLERY_EXAMPLES
from audit.report.certified import MAP_GALLERY
from audit.report.clean import CLEAN_GALLERY
from audit.report.embed import THUMBNAIL_SIDE, make_thumbnail
from audit.schema import validate_record

#: The budget of a page of an 8-image ``arnab2018`` + ``massena2025`` run (bench/README.md)
PAGE_BUDGET = 5_000_000


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """A fabricated 8-image run's folder, record and page (made once: about 3 s)."""
    report_dir = tmp_path_factory.mktemp("arnab-massena-8")
    record = fabricate_record(report_dir, images=8)
    (report_dir / "results.json").write_text(json.dumps(record), encoding="utf-8")
    return report_dir, record, render_report(report_dir).read_text(encoding="utf-8")


def test_the_fabricated_run_is_a_valid_record(run: tuple[Path, dict[str, Any], str]) -> None:
    _, record, _ = run
    validate_record(record)
    assert len(record["evaluations"]["attacks"]) == 40
    assert all(len(e["examples"]) == 3 for e in record["evaluations"]["attacks"])


def test_page_of_an_8_image_run_stays_within_budget(run: tuple[Path, dict[str, Any], str]) -> None:
    report_dir, record, page = run
    size = len(page.encode("utf-8"))
    assert size <= PAGE_BUDGET, f"index.html is {size:,} bytes"
    # The evidence it leaves out is beside it, at full resolution, and linked.
    links = set(re.findall(r'href="((?:attacks|examples|certificates)/[^"]+)"', page))
    recorded = {
        example[key]
        for entry in record["evaluations"]["attacks"]
        for example in entry["examples"]
        for key in ("image", "adversarial", "perturbation", "ground_truth")
    }
    assert recorded <= links
    assert all((report_dir / link).is_file() for link in links)


def test_each_distinct_image_is_embedded_once(run: tuple[Path, dict[str, Any], str]) -> None:
    _, record, page = run
    uris = re.findall(r'href="(data:image/[^"]+)"', page)
    assert len(uris) == len(set(uris)) == page.count("<symbol ")
    # An input is drawn next to every evaluation that picked it, and defined once.
    inputs = [uri for _, href, uri in drawn_images(page, page) if "-input-" in href]
    assert len(inputs) >= 40 * GALLERY_EXAMPLES and len(set(inputs)) <= 8
    # Bounded by the galleries, whatever the number of images audited.
    evaluations = len(record["evaluations"]["attacks"])
    bound = evaluations * GALLERY_EXAMPLES * 6 + CLEAN_GALLERY * 3 + MAP_GALLERY * 2
    assert len(uris) <= bound
    assert not re.search(r'src="data:|<img ', page)  # no image inlined twice


def test_examples_beyond_the_gallery_are_linked_not_embedded(
    run: tuple[Path, dict[str, Any], str],
) -> None:
    report_dir, record, page = run
    more = json.loads(json.dumps(record))
    for entry in more["evaluations"]["attacks"]:
        # Later examples, as an audit with ``examples = 12`` keeps them (same files here).
        entry["examples"] += [dict(entry["examples"][-1], name=f"more-{i}") for i in range(9)]
    bigger = render_html(more, report_dir=report_dir)
    assert bigger.count("<symbol ") == page.count("<symbol ")
    per_link_line = (len(bigger) - len(page)) / (9 * len(more["evaluations"]["attacks"]))
    assert per_link_line < 1500  # a line of six links, no image


def test_rerendering_the_same_record_gives_the_same_bytes(
    run: tuple[Path, dict[str, Any], str],
) -> None:
    report_dir, _, page = run
    # Another process with another hash seed: nothing may depend on set or dict order.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run(
        [sys.executable, "-m", "audit.report", str(report_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (report_dir / "index.html").read_text(encoding="utf-8") == page


def _attacked(name: str, seed: int) -> AdversarialExample:
    rng = np.random.default_rng(0)  # the same scene in every evaluation
    image = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (16, 32))
    noise = np.random.default_rng(seed).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    return AdversarialExample(name, image, noise, noise, mask, mask, (mask + 1) % 4, 1.0, 0.5)


def test_images_shared_by_evaluations_are_written_once(tmp_path: Path) -> None:
    entries = [
        write_adversarial_examples(
            tmp_path,
            f"eval-{seed}",
            [_attacked("scene 7", seed)],
            palette=STREET_PALETTE,
            ignore_index=255,
        )[0]
        for seed in (1, 2)
    ]
    for key in ("image", "ground_truth", "prediction_clean"):
        assert entries[0][key] == entries[1][key]
        assert entries[0][key].startswith("examples/scene-7-")
    for key in ("adversarial", "perturbation", "prediction_adv"):
        assert entries[0][key] != entries[1][key]
    assert len(list((tmp_path / "examples").iterdir())) == 3
    assert not list(tmp_path.rglob(".*.tmp"))


def test_masks_are_palette_pngs_drawing_the_same_colours() -> None:
    mask = np.array([[0, 1, 255], [7, 300, -1]])
    image = label_image(mask, STREET_PALETTE, 255)
    assert image.mode == "P"
    expected = colorize(mask, STREET_PALETTE, 255)
    expected[1, 1] = expected[1, 2] = (0, 0, 0)  # labels out of range: drawn as ignored
    assert np.array_equal(np.asarray(image.convert("RGB")), expected)


def _encoded(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_thumbnails_keep_masks_exact_and_photos_small() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 8, (16, 32)), 64, axis=0), 64, axis=1)
    mask = Image.fromarray(colorize(labels, STREET_PALETTE, 255))  # 1024 x 2048
    thumb = make_thumbnail(_encoded(mask))
    assert thumb.crisp and (thumb.width, thumb.height) == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    drawn = np.asarray(Image.open(io.BytesIO(thumb.data)).convert("RGB"))
    # Nearest-neighbour and lossless: every pixel is a class colour, none blended.
    assert {tuple(c) for c in drawn.reshape(-1, 3)} <= {tuple(c) for c in STREET_PALETTE}

    photo = Image.fromarray(rng.integers(0, 256, (512, 1024, 3), dtype=np.uint8))
    small = make_thumbnail(_encoded(photo))
    assert not small.crisp and (small.width, small.height) == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    assert small.data[:4] == b"RIFF" and len(small.data) < 100_000
    assert make_thumbnail(_encoded(photo)) == small  # deterministic

"""Inputs that used to be accepted silently, end to end through the plugin.

Each test builds the bad (or newly accepted) input itself: a model whose embedded
``audit.json`` uses a key SegAudit does not know, a folder dataset with masks but no images,
a folder dataset without ``classes.txt``.  A refusal must read as a sentence in pytest's
output, and the run must still leave both ``results.json`` and ``index.html``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.data.synthetic import SyntheticStreetScenes
from conftest import TINY_DATA, ColourNet, report_files, save_torchscript

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

CLEAN = """
name = "gate"
[[claims]]
id = "floor"
statement = "Pixel accuracy is at least 0"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0
"""

#: the 8 classes ColourNet predicts and the synthetic data has
NAMES = list(SyntheticStreetScenes(num_samples=1).class_names)


def _write_folder(root: Path, stems: list[str], *, orphans: int = 0) -> Path:
    """32x64 images and masks of class indices 0..7, plus ``orphans`` masks without images."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k, stem in enumerate(stems):
        pixels = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "images" / f"{stem}.png")
        labels = (np.arange(32 * 64).reshape(32, 64) + k) % len(NAMES)
        Image.fromarray(labels.astype(np.uint8), "L").save(root / "masks" / f"{stem}.png")
    for k in range(orphans):
        Image.fromarray(np.zeros((32, 64), np.uint8), "L").save(root / "masks" / f"lost{k}.png")
    return root


# -- unknown keys in the model's audit.json ---------------------------------------------


def test_unknown_embedded_key_is_an_error_that_says_how_to_fix_it(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(ColourNet(), pytester.path / "third.pt", {"classes": NAMES})
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(errors=1)  # the audit could not run: an error
    result.stdout.fnmatch_lines(
        [
            "*third.pt (audit.json), key 'classes': unknown model metadata key "
            "(did you mean 'num_classes' or 'class_names'?)*re-export the model*"
            "--audit-metadata FILE, ?tool.segaudit.metadata?*"  # fnmatch: [ ] is a set
        ]
    )
    record, html = report_files(pytester.path / "audit-report")
    assert record["status"] == "error"
    assert "key 'classes'" in record["errors"][0]["message"]
    assert "key &#39;classes&#39;" in html or "key 'classes'" in html


def test_command_line_metadata_replaces_the_unknown_embedded_key(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(ColourNet(), pytester.path / "third.pt", {"classes": NAMES})
    pytester.makefile(".toml", gate=CLEAN)
    meta = pytester.path / "meta.json"
    meta.write_text(json.dumps({"class_names": NAMES}))
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA,
        "--audit-metadata", str(meta),
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    record, html = report_files(pytester.path / "audit-report")
    model_record = record["provenance"]["model"]
    assert model_record["metadata"]["class_names"] == NAMES
    assert model_record["embedded_keys_replaced"] == {"classes": "class_names"}
    assert "Ignored audit.json keys" in html and "classes (replaced by class_names)" in html


def test_pyproject_metadata_replaces_the_unknown_embedded_key(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(ColourNet(), pytester.path / "third.pt", {"classes": NAMES})
    pytester.makefile(".toml", gate=CLEAN)
    pytester.makepyprojecttoml(f"[tool.segaudit.metadata]\nclass_names = {json.dumps(NAMES)}\n")
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1)
    record, _ = report_files(pytester.path / "audit-report")
    assert record["provenance"]["model"]["embedded_keys_replaced"] == {"classes": "class_names"}


# -- folder datasets --------------------------------------------------------------------


def test_orphan_masks_are_a_clear_error_and_the_report_is_written(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    root = _write_folder(pytester.path / "data", ["a", "b"], orphans=2)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", f"folder:{root}"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*2 mask(s) in *masks have no image*: lost0.png, lost1.png;*"])
    record, html = report_files(pytester.path / "audit-report")
    assert record["status"] == "error"
    assert "lost0.png, lost1.png" in record["errors"][0]["message"] and "lost0.png" in html


def test_folder_without_classes_file_takes_the_models_class_names(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(ColourNet(), pytester.path / "named.pt", {"class_names": NAMES})
    root = _write_folder(pytester.path / "data", ["a", "b"])
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", f"folder:{root}"
    )
    result.assert_outcomes(passed=1)
    record, html = report_files(pytester.path / "audit-report")
    dataset = record["provenance"]["dataset"]
    assert dataset["class_names"] == NAMES
    assert dataset["describe"]["class_names_from"] == "the model's metadata"
    assert "the model&#39;s metadata" in html or "the model's metadata" in html


def test_folder_without_any_class_names_is_still_an_error(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    # tiny_model declares num_classes only: no names to lend the dataset.
    root = _write_folder(pytester.path / "data", ["a"])
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", f"folder:{root}"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no class names for *data: write *classes.txt*model's metadata*"])
    report_files(pytester.path / "audit-report")

"""The wrapper's output-resolution rule: whole-factor upsampling only, unless accepted.

A model whose logits are 7x3 for a 128x256 image cannot segment it; stretching them
silently over the image would let its claims pass.  These tests build such models and check
the refusal, the explicit acceptance, and that every resize made ends up in the record, the
report and the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import ConfigError, ModelError
from audit.model import ModelMetadata, OutputResolution, SegmentationWrapper
from audit.report import build_provenance, build_summary, fmt_resize
from conftest import TINY_DATA, ColourNet, report_files, save_torchscript

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


class Resized(nn.Module):
    """ColourNet's logits brought to ``size`` (fixed) or scaled by ``scale``."""

    def __init__(self, *, size: tuple[int, int] | None = None, scale: float | None = None) -> None:
        super().__init__()
        self.net = ColourNet()
        self.size = size
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.size is not None:
            return F.adaptive_avg_pool2d(logits, self.size)
        return F.interpolate(logits, scale_factor=self.scale, mode="bilinear")


def images(h: int = 128, w: int = 256) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))


# -- the rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "factor"), [((128, 256), 1), ((64, 128), 2), ((16, 32), 8), ((1, 2), 128)]
)
def test_whole_factor_outputs_are_upsampled_and_recorded(
    size: tuple[int, int], factor: int
) -> None:
    torch.manual_seed(0)
    wrapper = SegmentationWrapper(Resized(size=size), name="m.pt")
    with torch.no_grad():
        out = wrapper(images())
    assert out.shape == (2, 8, 128, 256)
    resolution = wrapper.output_resolution
    assert resolution == OutputResolution((128, 256), size)
    assert resolution.factor == factor and resolution.refusal() is None
    assert wrapper.resized_output is (factor != 1)
    assert resolution.to_dict() == {
        "input_resolution": [128, 256],
        "output_resolution": list(size),
        "resize_factor": factor,
    }


@pytest.mark.parametrize(
    ("model", "output", "reason"),
    [
        # The case from the issue: a 7x3 map stretched over a 128x256 image.
        (Resized(size=(7, 3)), "7x3", "aspect ratio differs from the input's"),
        (Resized(size=(64, 64)), "64x64", "aspect ratio differs from the input's"),
        (Resized(size=(48, 96)), "48x96", "the input is not a whole multiple of them"),
        (Resized(scale=2), "256x512", "they are larger than the input"),
        (Resized(size=(128, 512)), "128x512", "they are larger than the input"),
    ],
)
def test_other_output_sizes_are_refused_with_the_sizes_and_the_fix(
    model: nn.Module, output: str, reason: str
) -> None:
    wrapper = SegmentationWrapper(model, name="m.pt")
    with pytest.raises(ModelError) as info, torch.no_grad():
        wrapper(images())
    message = str(info.value)
    assert message.startswith(f"model 'm.pt' returns {output} logits for a 128x256 input: ")
    assert reason in message
    assert "set accept_resize = true in its metadata (--audit-metadata FILE" in message
    # Nothing was resized, so nothing is recorded as if it had been.
    assert wrapper.output_resolution is None and wrapper.resized_output is False


def test_accept_resize_in_the_metadata_takes_any_size_and_records_the_factor() -> None:
    wrapper = SegmentationWrapper(
        Resized(size=(7, 3)), ModelMetadata(accept_resize=True), name="m.pt"
    )
    with torch.no_grad():
        out = wrapper(images())
    assert out.shape == (2, 8, 128, 256) and wrapper.resized_output is True
    record = wrapper.output_resolution.to_dict()
    assert record["output_resolution"] == [7, 3]
    assert record["resize_factor"] == [round(128 / 7, 4), round(256 / 3, 4)]
    # accept_resize = false is the default rule, stated.
    strict = SegmentationWrapper(Resized(size=(7, 3)), ModelMetadata(accept_resize=False))
    with pytest.raises(ModelError, match="aspect ratio"), torch.no_grad():
        strict(images())


def test_accept_resize_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"key 'accept_resize': expected true or false"):
        ModelMetadata.from_mapping({"accept_resize": "yes"}, source="meta.json")
    assert ModelMetadata.from_mapping({"accept_resize": True}, source="m").accept_resize is True


def test_the_first_call_is_the_one_recorded() -> None:
    wrapper = SegmentationWrapper(Resized(size=(16, 32)))
    with torch.no_grad():
        wrapper(images())
        wrapper(images(64, 128))  # stride 4 now; the record keeps the first observation
    assert wrapper.output_resolution == OutputResolution((128, 256), (16, 32))


# -- how it reads -----------------------------------------------------------------------


def test_fmt_resize_sentences() -> None:
    assert fmt_resize([32, 64], [8, 16], 4) == (
        "8 × 16 logits upsampled ×4 (bilinear) to the 32 × 64 input"
    )
    accepted = fmt_resize([32, 64], [7, 3], [4.5714, 21.3333])
    assert accepted == (
        "7 × 3 logits upsampled ×4.5714 × 21.3333 (bilinear, accepted by the model's "
        "accept_resize metadata) to the 32 × 64 input"
    )
    assert "resized" in fmt_resize([32, 64], [64, 128], [0.5, 0.5])
    assert fmt_resize([32, 64], [32, 64], 1) is None
    assert fmt_resize(None, [8, 16], 4) is None  # records from before the model ran


def test_report_shows_output_resolution_in_provenance_and_on_the_cover() -> None:
    model = {"input_resolution": [32, 64], "output_resolution": [8, 16], "resize_factor": 4}
    results = {"provenance": {"model": model}}
    rows = {r["label"]: r["value"] for g in build_provenance(results)["groups"] for r in g["rows"]}
    assert rows["Output resolution"] == "8 × 16 (H × W)"
    assert rows["Resize"].startswith("8 × 16 logits upsampled ×4")
    assert build_summary(results)["output_resize"].startswith("8 × 16 logits upsampled ×4")
    same = {"input_resolution": [32, 64], "output_resolution": [32, 64], "resize_factor": 1}
    rows = {
        r["label"]: r["value"]
        for g in build_provenance({"provenance": {"model": same}})["groups"]
        for r in g["rows"]
    }
    assert rows["Resize"] == "none (logits at the input size)"
    assert build_summary({"provenance": {"model": same}})["output_resize"] is None


# -- end to end -------------------------------------------------------------------------

CLEAN = """
name = "gate"
[[claims]]
id = "floor"
statement = "Pixel accuracy is at least 0"
kind = "clean"
metric = "pixel_accuracy"
min = 0.0
"""


def test_refused_output_is_a_clear_error_and_the_report_is_written(
    pytester: pytest.Pytester, run_audit
) -> None:
    # TINY_DATA is 32x64; adaptive pooling makes the traced model answer 7x3 whatever it sees.
    model = save_torchscript(Resized(size=(7, 3)), pytester.path / "coarse.pt")
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model 'coarse.pt' returns 7x3 logits for a 32x64 input: their aspect ratio "
            "differs*accept_resize = true*"
        ]
    )
    record, html = report_files(pytester.path / "audit-report")
    assert record["status"] == "error"
    assert "returns 7x3 logits" in record["claims"][0]["message"]
    assert "output_resolution" not in record["provenance"]["model"]
    assert "returns 7x3 logits" in html


def test_whole_factor_output_passes_and_is_shown_everywhere(
    pytester: pytest.Pytester, run_audit
) -> None:
    model = save_torchscript(Resized(size=(8, 16)), pytester.path / "stride4.pt")
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["model output: 8 × 16 logits upsampled ×4 (bilinear) to the 32 × 64 input"]
    )
    record, html = report_files(pytester.path / "audit-report")
    model_record = record["provenance"]["model"]
    assert model_record["output_resolution"] == [8, 16]
    assert model_record["input_resolution"] == [32, 64] and model_record["resize_factor"] == 4
    assert "Output resolution" in html
    assert "Model output: 8 × 16 logits upsampled ×4" in html


def test_no_terminal_line_when_nothing_was_resized(
    pytester: pytest.Pytester, run_audit, tiny_model: Path
) -> None:
    pytester.makefile(".toml", gate=CLEAN)
    result = run_audit(
        "--audit", str(tiny_model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA
    )
    result.assert_outcomes(passed=1)
    assert "model output:" not in result.stdout.str()
    record, html = report_files(pytester.path / "audit-report")
    assert record["provenance"]["model"]["resize_factor"] == 1
    assert "Model output:" not in html


def test_accept_resize_from_the_command_line_metadata(pytester: pytest.Pytester, run_audit) -> None:
    model = save_torchscript(Resized(size=(7, 3)), pytester.path / "coarse.pt")
    pytester.makefile(".toml", gate=CLEAN)
    meta = pytester.path / "meta.json"
    meta.write_text(json.dumps({"accept_resize": True}))
    result = run_audit(
        "--audit", str(model), "--audit-suite", "gate.toml", "--audit-data", TINY_DATA,
        "--audit-metadata", str(meta),
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["model output: 7 × 3 logits upsampled ×4.5714 × 21.3333*"])
    record, _ = report_files(pytester.path / "audit-report")
    assert record["provenance"]["model"]["metadata"]["accept_resize"] is True
    assert record["provenance"]["model"]["resize_factor"] == [4.5714, 21.3333]

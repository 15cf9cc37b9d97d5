"""The report's Certificates section: L provenance, curves, radius maps, soundness."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from report_helpers import drawn_images

from audit.report import render_html
from audit.report.certificates import (
    MAX_SCATTER_POINTS,
    VIOLATION_COLOR,
    VIRIDIS_STOPS,
    build_certificates,
)
from tests.test_report_attacks import BalanceChecker, section, strip_tags

LIP_ID = "lipschitz-1a2b3c"
SMOOTH_ID = "smoothing-4d5e6f"
SOUND_CLAIM = "massena2025::soundness[l2-0.1]"
# The engine certifies a fixed grid plus every radius a claim states (here 0.17).
RADII = sorted([round(0.02 * i, 2) for i in range(26)] + [0.17])
LAYERS = [
    {"name": "model.0", "kind": "Conv2d", "bound": 1.0001, "method": "Gram iteration (Delattre)"},
    {"name": "model.1", "kind": "GroupSort", "bound": 1.0, "method": "1-Lipschitz activation"},
    {"name": "model.2", "kind": "Conv2d", "bound": 1.0001, "method": "Gram iteration (Delattre)"},
]
LIPSCHITZ = {
    "value": 1.0002,
    "kind": "computed",
    "description": "bound from the weights (product of per-layer bounds)",
    "lower_bound": None,
    "bound": {"value": 1.0002, "method": "product of per-layer bounds", "layers": LAYERS},
}
INPUT_NPY = "evidence/massena2025-soundness-l2-0.1/input.npy"
PERTURBATION_NPY = "evidence/massena2025-soundness-l2-0.1/perturbation.npy"


def lipschitz_entry() -> dict[str, Any]:
    return {
        "id": LIP_ID,
        "certifier": "lipschitz",
        "lipschitz": copy.deepcopy(LIPSCHITZ),
        "radii": list(RADII),
        "certified_pixel_accuracy": [round(0.91 * math.exp(-6 * r), 4) for r in RADII],
        "certified_fraction": [round(math.exp(-5 * r), 4) for r in RADII],
        "clean_pixel_accuracy": 0.914,
        "resolution": [128, 256],
        "num_samples": 64,
        "forward_passes": 8,
        "seconds": 0.4,
        "kappa": 0.001,
        "examples": [
            {
                "name": f"synthetic-00000{i}",
                "image": f"certificates/{LIP_ID}/{i}-image.png",
                "radius_map": f"certificates/{LIP_ID}/{i}-radius.png",
                "radius_max_shown": 0.2,
                "median_radius": 0.047,
                "certified_share_at": {"0.05": 0.45, "0.1": 0.09, "0.17": 0.01},
            }
            for i in range(2)
        ],
    }


def smoothing_entry() -> dict[str, Any]:
    return {
        "id": SMOOTH_ID,
        "certifier": "smoothing",
        "config": {
            "sigma": 0.25,
            "n": 100,
            "n0": 10,
            "tau": 0.75,
            "alpha": 0.001,
            "correction": "holm",
        },
        "radius": 0.1686,
        "certified_pixel_accuracy": 0.52,
        "certified_miou": 0.31,
        "abstain_rate": 0.35,
        "num_samples": 8,
        "forward_passes": 880,
        "seconds": 12.0,
    }


def scatter_pairs() -> list[list[float]]:
    """Thirty pixels above the diagonal (loose certificates) and two below it."""
    above = [[0.01 * i, 0.05 + 0.03 * i] for i in range(30)]
    return [*above, [0.2, 0.1], [0.15, 0.05]]


def soundness_entry() -> dict[str, Any]:
    return {
        "claim": SOUND_CLAIM,
        "eps": 0.1,
        "violations": 3,
        "lipschitz": copy.deepcopy(LIPSCHITZ),
        "checks": [
            {
                "attack": "pgd",
                "certified_pixels": 1234,
                "flipped_certified": 2,
                "flipped_any": 20000,
                "metric_violations": 0,
                "max_perturbation_norm": 0.1,
                "scatter": [],
                "tightness_median": None,
                "margin_use_median": 0.42,
                "margin_use_max": 0.97,
            },
            {
                "attack": "advlib:pdpgd",
                "certified_pixels": 1234,
                "flipped_certified": 0,
                "flipped_any": 25000,
                "metric_violations": 1,
                "max_perturbation_norm": 0.0998,
                "scatter": scatter_pairs(),
                "tightness_median": 0.4,
            },
        ],
        "counterexample": {
            "attack": "pgd",
            "sample": "synthetic-000003",
            "pixel": [12, 40],
            "margin": 0.3,
            "certified_radius": 0.2,
            "lipschitz": 1.0002,
            "norm": "l2",
            "eps": 0.1,
            "perturbation_norm": 0.1,
            "flipped_pixels": 5,
            "files": {"input": INPUT_NPY, "perturbation": PERTURBATION_NPY},
        },
        "falsified": None,
        "num_samples": 8,
        "seconds": 4.0,
    }


def claim(nodeid: str, kind: str, verdict: str, **fields: Any) -> dict[str, Any]:
    return {"nodeid": nodeid, "kind": kind, "verdict": verdict, "statement": nodeid, **fields}


def make_results() -> dict[str, Any]:
    lipschitz_evidence = {"certifier": "lipschitz", "lipschitz": copy.deepcopy(LIPSCHITZ)}
    return {
        "schema_version": 1,
        "complete": True,
        "status": "failed",
        "claims": [
            claim(
                "massena2025::lipschitz-bound",
                "lipschitz",
                "passed",
                measured=1.0002,
                threshold={"min": None, "max": 1.01},
                evidence={"bound": copy.deepcopy(LIPSCHITZ["bound"])},
            ),
            claim(
                "massena2025::certified-pa[l2-0.1]",
                "certified",
                "passed",
                params={"certifier": "lipschitz", "norm": "l2", "eps": "0.1"},
                measured=0.497,
                evidence=lipschitz_evidence,
            ),
            claim(
                "massena2025::certified-pa[l2-0.17]",
                "certified",
                "passed",
                params={"certifier": "lipschitz", "norm": "l2", "eps": "0.17"},
                measured=0.328,
                evidence=lipschitz_evidence,
            ),
            claim(
                SOUND_CLAIM,
                "certificate_soundness",
                "failed",
                params={"certifier": "lipschitz", "norm": "l2", "eps": "0.1"},
                measured=3.0,
            ),
        ],
        "evaluations": {
            "certificates": [lipschitz_entry(), smoothing_entry()],
            "soundness": [soundness_entry()],
        },
    }


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "certificates" / LIP_ID
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 8), (90, 120, 200)).save(folder / f"{i}-image.png")
        Image.new("RGB", (16, 8), (68, 1, 84)).save(folder / f"{i}-radius.png")
    return tmp_path


def chart(html: str) -> str:
    match = re.search(r'<figure class="cert-chart">.*?</figure>', html, flags=re.S)
    assert match, "no certified-accuracy chart"
    return match.group(0)


def scatter(html: str) -> str:
    match = re.search(r'<figure class="cert-scatter">.*?</figure>', html, flags=re.S)
    assert match, "no soundness scatter"
    return match.group(0)


def test_section_sits_after_attacks_and_is_hidden_without_certificates(report_dir: Path) -> None:
    results = make_results()
    results["evaluations"]["attacks"] = [
        {"id": "a", "attack": "pgd", "norm": "l2", "eps": 0.1, "iou_ratio": 0.5}
    ]
    html = render_html(results, report_dir=report_dir)
    assert html.index('id="attacks"') < html.index('id="certificates"')
    assert html.index('id="certificates"') < html.index('id="provenance"')
    assert '<a href="#certificates">Certificates</a>' in html

    bare = {"schema_version": 1, "claims": [claim("c::x", "clean", "passed", evidence={})]}
    for evaluations in ({}, {"certificates": [], "soundness": []}, {"certificates": "junk"}):
        html = render_html({**bare, "evaluations": evaluations}, report_dir=report_dir)
        assert 'id="certificates"' not in html and 'href="#certificates"' not in html
    # A certified claim that never ran (no evidence) is not a reason to show the section.
    unrun = {**bare, "claims": [claim("c::pa", "certified", "not_run", evidence={})]}
    assert build_certificates(unrun) is None


def test_l_provenance_names_value_kind_method_and_layers(report_dir: Path) -> None:
    html = section(render_html(make_results(), report_dir=report_dir), "certificates")
    block = html[html.index("Where L comes from") : html.index("Certified accuracy against")]
    text = strip_tags(block)

    # One constant, used by the certification, the soundness check and the claims.
    assert block.count('class="cert-source"') == 1
    assert "L = 1.0002 computed upper bound proven from the weights" in text
    assert "bound from the weights (product of per-layer bounds)" in text
    assert "Bound method product of per-layer bounds" in text
    assert f"certification {LIP_ID}" in text and f"soundness {SOUND_CLAIM}" in text
    layers = re.search(r'<details class="cert-layers">.*?</details>', block, flags=re.S)
    assert layers and "open" not in layers.group(0)[:40]
    assert "Per-layer bounds (3 layers; their product bounds L = 1.0002)" in strip_tags(
        layers.group(0)
    )
    assert "model.1" in layers.group(0) and "GroupSort" in layers.group(0)
    assert "1 model.0 Conv2d 1.0001 Gram iteration (Delattre)" in strip_tags(layers.group(0))
    # The Lipschitz claim: claimed max, proven bound, verdict.
    assert "massena2025::lipschitz-bound PASS" in text and "1.01 1.0002" in text


def test_claimed_constant_shows_the_falsification_lower_bound() -> None:
    results = make_results()
    claimed = {
        "value": 1.5,
        "kind": "claimed",
        "description": "claimed in the model's metadata; not contradicted by a search",
        "lower_bound": 0.98,
        "bound": None,
    }
    results["evaluations"]["certificates"][0]["lipschitz"] = claimed
    results["evaluations"]["soundness"] = []
    results["claims"] = []
    context = build_certificates(results)
    assert context is not None
    (source,) = context["sources"]
    assert source["kind"] == "claimed, tested" and source["value"] == "1.5"
    assert source["lower_bound"] == "0.98" and source["lower_below"] is True
    assert source["layers"] == [] and source["method"] == "n/a"


def test_curves_draw_two_lines_per_lipschitz_certification_and_a_smoothing_step(
    report_dir: Path,
) -> None:
    html = section(render_html(make_results(), report_dir=report_dir), "certificates")
    svg = chart(html)

    series = re.findall(r'<g class="series[^"]*" data-series="([^"]+)">', svg)
    assert series == [f"{SMOOTH_ID}:smoothing", f"{LIP_ID}:pa", f"{LIP_ID}:fraction"]
    assert svg.count("<polyline") == 3
    lines = re.findall(r'<g class="series" data-series="[^"]+">.*?</g>', svg, flags=re.S)
    pa, fraction = lines
    assert "stroke-dasharray" not in pa.split("<path")[0]
    assert 'stroke-dasharray="6 4"' in fraction.split("<path")[0]
    # 27 radii each, one marker per point.
    assert pa.count("<path") == 27 and fraction.count("<path") == 27
    assert f"radius 0.1: {0.91 * math.exp(-0.6):.3f}" in pa
    for label in (
        "certified pixel accuracy (L 1.0002, computed upper bound)",
        "certified fraction (L 1.0002, computed upper bound)",
        "clean pixel accuracy (no perturbation)",
        "smoothing σ 0.25, n 100, n0 10, τ 0.75, α 0.001, holm: certified PA up to R 0.1686",
        "radius stated by a certified claim",
    ):
        assert f">{label}</text>" in svg
    assert "clean pixel accuracy 0.914" in svg and 'stroke-dasharray="1.5 3"' in svg
    assert "L2 radius ([0,1] pixel space)" in svg and "at 128 × 256 (H × W)" in svg
    assert len(re.findall(r'<g class="claim-radius">', svg)) == 2


def test_curve_geometry_is_linear_from_zero() -> None:
    context = build_certificates(make_results())
    assert context is not None
    chart = context["chart"]
    xs = {tick["label"]: tick["x"] for tick in chart["x_ticks"]}
    assert xs["0"] == chart["plot_left"] and xs["0.5"] == chart["plot_right"]
    assert xs["0.2"] - xs["0.1"] == pytest.approx(xs["0.1"] - xs["0"], abs=0.2)
    ys = {tick["label"]: tick["y"] for tick in chart["y_ticks"]}
    assert ys["0"] == chart["plot_bottom"] and ys["1"] == chart["plot_top"]
    # The smoothing step: flat at its accuracy up to R, then straight down to 0.
    (step,) = chart["steps"]
    points = [tuple(map(float, p.split(","))) for p in step["points_attr"].split()]
    height = chart["plot_bottom"] - chart["plot_top"]
    assert points[0][1] == points[1][1] == pytest.approx(chart["plot_top"] + 0.48 * height, abs=0.1)
    r_x = chart["plot_left"] + 0.1686 / 0.5 * (chart["plot_right"] - chart["plot_left"])
    assert points[1][0] == points[2][0] == pytest.approx(r_x, abs=0.1)
    assert points[2][1] == chart["plot_bottom"]
    claim_x = [line["x"] for line in chart["claim_lines"]]
    assert claim_x == [
        pytest.approx(xs["0.1"], abs=0.1),
        pytest.approx(xs["0"] + 0.34 * (xs["0.5"] - xs["0"]), abs=0.1),
    ]


def test_table_lists_each_certification_at_the_claim_radii(report_dir: Path) -> None:
    html = section(render_html(make_results(), report_dir=report_dir), "certificates")
    table = html[html.index('<table class="attack-table cert-table">') :]
    table = table[: table.index("</table>")]
    header = strip_tags(table[: table.index("</thead>")])
    assert "Cert. PA at 0.1" in header and "Cert. PA at 0.17" in header
    rows = re.findall(r"<tr>.*?</tr>", table[table.index("<tbody>") :], flags=re.S)
    cells = [
        [strip_tags(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in rows
    ]
    lip, smooth = cells
    assert lip[0].startswith(f"Lipschitz {LIP_ID}")
    assert "massena2025::certified-pa[l2-0.1] PASS" in lip[0]
    assert lip[1] == "L = 1.0002 (computed upper bound) κ = 0.001"
    assert lip[2] == "0 – 0.5 (27 radii) at 128×256"
    assert lip[3] == "0.4994 60.7% certified"  # 0.91 exp(-0.6), to the digits it has
    assert lip[4] == "0.3281 42.7% certified"  # 0.91 exp(-6 x 0.17), exp(-0.85)
    assert lip[5:] == ["0.914", "64", "8", "6.25 ms 400 ms in all"]
    assert smooth[0] == f"Randomized smoothing {SMOOTH_ID}"
    assert (
        smooth[1]
        == "σ 0.25, n 100, n0 10, τ 0.75, α 0.001, holm certified mIoU 0.310 · abstained 35.0%"
    )
    assert smooth[2].startswith("R = 0.1686")
    # Certified up to R = 0.1686: 0.1 is covered, 0.17 is not.
    assert smooth[3:5] == ["0.520", "0 (beyond R)"]
    assert smooth[6:] == ["8", "880", "1.5 s 12 s in all"]


def test_radius_maps_embed_images_with_a_viridis_colour_bar(report_dir: Path) -> None:
    page = render_html(make_results(), report_dir=report_dir)
    html = section(page, "certificates")
    (block,) = re.findall(r'<details id="cert-maps-1"[^>]*>.*?</details>', html, flags=re.S)
    assert re.match(r'<details id="cert-maps-1" class="attack-examples cert-maps" open>', block)
    figures = re.findall(r'<figure class="example cert-map">.*?</figure>', block, flags=re.S)
    assert len(figures) == 2
    for index, figure in enumerate(figures):
        drawn = drawn_images(figure, page)
        assert [alt for alt, _, _ in drawn] == [
            f"input synthetic-00000{index}",
            f"certified radius map of synthetic-00000{index}",
        ]
        assert all(uri.startswith("data:image/webp;base64,") for _, _, uri in drawn)
        gradient = re.search(r'<linearGradient id="([^"]+)"[^>]*>(.*?)</linearGradient>', figure)
        assert gradient
        stops = re.findall(r'offset="([^"]+)" stop-color="([^"]+)"', gradient.group(2))
        assert stops == [(f"{o * 100:g}%", c) for o, c in VIRIDIS_STOPS]
        assert f'fill="url(#{gradient.group(1)})"' in figure
        text = strip_tags(figure)
        assert ">0<" in figure and "0.1" in text and "≥ 0.2" in text
        assert "median radius 0.047" in text
        assert "certified 45.0% beyond 0.05, 9.0% beyond 0.1, 1.0% beyond 0.17" in text


def test_soundness_table_marks_flipped_certified_pixels(report_dir: Path) -> None:
    html = section(render_html(make_results(), report_dir=report_dir), "certificates")
    block = html[html.index('id="soundness-1"') :]
    head = strip_tags(block[: block.index("</div>")])
    assert SOUND_CLAIM in head and "FAIL" in head and "L2 radius 0.1" in head
    assert "violations 3" in head
    table = block[block.index('<table class="attack-table cert-checks">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr[^>]*>.*?</tr>", table[table.index("<tbody>") :], flags=re.S)
    pgd, pdpgd = rows
    assert strip_tags(pgd).split() == [
        "pgd", "1,234", "2", "20,000", "0", "0.1", "n/a", "42%", "/", "97%"
    ]  # fmt: skip
    assert strip_tags(pdpgd).split() == [
        "advlib:pdpgd",
        "1,234",
        "0",
        "25,000",
        "1",
        "0.0998",
        "0.4",
        "n/a",  # an older record: no margin use
    ]
    assert re.search(r'<td class="num cert-bad">2</td>', pgd)
    assert "cert-bad" not in re.findall(r"<td[^>]*>", pgd)[4]  # metric violations 0
    assert re.search(r'<td class="num cert-bad">1</td>', pdpgd)
    assert "exceeds the radius" not in table and "no evidence either way" not in table


def test_an_attack_that_flipped_nothing_is_flagged(report_dir: Path) -> None:
    results = make_results()
    check = results["evaluations"]["soundness"][0]["checks"][1]
    check.update(flipped_any=0, max_perturbation_norm=0.0)
    results["evaluations"]["soundness"][0]["checks"][0]["max_perturbation_norm"] = 0.2
    html = section(render_html(results, report_dir=report_dir), "certificates")
    text = strip_tags(html[html.index('<table class="attack-table cert-checks">') :])
    assert "advlib:pdpgd flipped no pixel at all: no evidence either way" in text
    assert "0.2 exceeds the radius" in text
    assert '<a href="#soundness-1"><code>' + SOUND_CLAIM in html


def test_scatter_draws_the_diagonal_and_red_points_below_it(report_dir: Path) -> None:
    html = section(render_html(make_results(), report_dir=report_dir), "certificates")
    svg = scatter(html)
    diagonal = re.search(
        r'<line class="diagonal" x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"', svg
    )
    assert diagonal
    x1, y1, x2, y2 = map(float, diagonal.groups())

    def below(x: float, y: float) -> bool:
        # SVG y grows downwards: below the diagonal is a larger y than the line's at x.
        return y > y1 + (y2 - y1) * (x - x1) / (x2 - x1) + 0.5

    red = re.findall(r'<path class="scatter-violation" d="([^"]+)" fill="([^"]+)"', svg)
    assert len(red) == 2 and all(fill == VIOLATION_COLOR for _, fill in red)
    context = build_certificates(make_results())
    assert context is not None
    sc = context["soundness"][0]["scatter"]
    assert all(below(p["x"], p["y"]) for p in sc["violations"])
    ((points_path, colour),) = re.findall(
        r'<path class="scatter-points" d="([^"]+)" fill="none" stroke="([^"]+)"', svg
    )
    dots = [tuple(map(float, m)) for m in re.findall(r"M([\d.]+),([\d.]+)h0", points_path)]
    assert len(dots) == 30 and not any(below(x, y) for x, y in dots)
    assert colour != VIOLATION_COLOR
    text = strip_tags(svg)
    assert "y = x" in text and "below the diagonal: certificate beaten (2)" in text
    assert "points far above it mean loose certificates" in text
    assert "Median tightness (certified / empirical radius): advlib:pdpgd 0.4" in text
    assert "32 of 32 recorded pairs drawn" in text


def test_scatter_is_subsampled_deterministically_keeping_violations() -> None:
    results = make_results()
    pairs = [[0.001 * (i % 100), 0.2 + 0.0001 * i] for i in range(5000)] + [[0.3, 0.01]] * 3
    results["evaluations"]["soundness"][0]["checks"][1]["scatter"] = pairs
    first = build_certificates(results)
    second = build_certificates(copy.deepcopy(results))
    assert first is not None and second is not None
    sc = first["soundness"][0]["scatter"]
    assert sc["shown"] == MAX_SCATTER_POINTS and sc["total"] == 5003
    assert len(sc["violations"]) == 3
    assert sum(s["count"] for s in sc["series"]) == MAX_SCATTER_POINTS - 3
    assert sc == second["soundness"][0]["scatter"]


def test_counterexample_box_lists_fields_and_links_the_arrays(report_dir: Path) -> None:
    html = section(render_html(make_results(), report_dir=report_dir), "certificates")
    box = re.search(r'<div class="cert-counterexample" role="alert">.*?</div>', html, flags=re.S)
    assert box
    text = strip_tags(box.group(0))
    assert (
        "A perturbation of L2 norm 0.1 changed the prediction of a pixel certified up to 0.2"
        in text
    )
    for expected in (
        "Attack pgd",
        "Sample synthetic-000003",
        "Pixel (row, col) (12, 40)",
        "Logit margin 0.3",
        "Certified radius 0.2",
        "L 1.0002",
        "Norm l2",
        "Radius attacked (eps) 0.1",
        "Perturbation norm 0.1",
        "Pixels flipped in the image 5",
    ):
        assert expected in text
    assert f'<a href="{INPUT_NPY}">input</a>' in box.group(0)
    assert f'<a href="{PERTURBATION_NPY}">perturbation</a>' in box.group(0)
    # The section opens with a banner pointing at the beaten check.
    assert re.search(r'class="banner cert-alert".*?href="#soundness-1"', html, flags=re.S)


def test_falsified_constant_and_unsafe_links() -> None:
    results = make_results()
    entry = results["evaluations"]["soundness"][0]
    entry["counterexample"]["files"] = {
        "input": "javascript:alert(1)",
        "perturbation": "/etc/passwd",
    }
    entry["falsified"] = {
        "lower_bound": 5.0,
        "method": "gradient ascent on ||f(x)-f(y)|| / ||x-y||",
        "files": {"falsifying_x": "evidence/s/falsifying_x.npy", "falsifying_y": "../y.npy"},
    }
    html = render_html(results, report_dir=Path("/nonexistent"))
    html = section(html, "certificates")
    assert 'href="javascript' not in html and 'href="/etc' not in html and 'href="../' not in html
    assert "<code>javascript:alert(1)</code>" in html
    box = re.search(
        r'<div class="cert-counterexample cert-falsified".*?</div>\s*</div>', html, re.S
    )
    assert box
    text = strip_tags(box.group(0))
    assert "The Lipschitz constant is false:" in text
    assert "at least 5-Lipschitz, above the L = 1.0002" in text
    assert 'href="evidence/s/falsifying_x.npy"' in box.group(0)


def test_soundness_falls_back_to_claim_evidence() -> None:
    results = make_results()
    sound = soundness_entry()
    del results["evaluations"]["soundness"]
    # Anchors count mapping entries only, as the claims table does.
    results["claims"].insert(0, None)
    results["claims"][4]["evidence"] = {
        "lipschitz": sound["lipschitz"],
        "radius": 0.1,
        "checks": sound["checks"],
        "counterexample": {k: v for k, v in sound["counterexample"].items() if k != "files"},
        "files": {"input": INPUT_NPY, "perturbation": PERTURBATION_NPY},
    }
    context = build_certificates(results)
    assert context is not None
    (block,) = context["soundness"]
    assert block["title"] == SOUND_CLAIM and block["violations"] == "3"
    assert block["claim"]["anchor"] == "claim-4"
    assert [f["href"] for f in block["counterexample"]["files"]] == [INPUT_NPY, PERTURBATION_NPY]


def test_partial_and_nan_records_render_as_na(tmp_path: Path) -> None:
    nan = float("nan")
    results = {
        "schema_version": 1,
        "claims": [None, {"kind": "certified", "params": {"eps": "junk"}, "evidence": {"x": 1}}],
        "evaluations": {
            "certificates": [
                {"certifier": "lipschitz"},
                {
                    "id": "half",
                    "certifier": "lipschitz",
                    "lipschitz": {"value": nan, "kind": None, "bound": {"layers": [None, {}]}},
                    "radii": [0.0, 0.1, nan, 0.3],
                    "certified_pixel_accuracy": [0.9, None, 0.5],
                    "certified_fraction": "odd",
                    "clean_pixel_accuracy": nan,
                    "num_samples": 0,
                    "seconds": nan,
                    "examples": [
                        "not a mapping",
                        {
                            "name": None,
                            "image": None,
                            "radius_max_shown": nan,
                            "certified_share_at": {"x": 1, "0.1": None},
                        },
                    ],
                },
                {
                    "certifier": "smoothing",
                    "config": None,
                    "radius": nan,
                    "certified_pixel_accuracy": None,
                },
                {"certifier": "mystery"},
                "not a mapping",
                None,
            ],
            "soundness": [
                None,
                {
                    "claim": None,
                    "checks": [
                        None,
                        {"attack": None, "scatter": [[nan, 1], [1], "x"], "flipped_certified": nan},
                    ],
                    "counterexample": {"pixel": None, "files": None},
                    "falsified": {},
                },
                {},
            ],
        },
    }
    html = section(render_html(results, report_dir=tmp_path), "certificates")
    text = strip_tags(html)
    assert "could not be rendered" not in html
    assert "n/a" in text and not re.search(r"\b(nan|inf)\b", text, flags=re.I)
    assert "No image recorded" in html and "scale not recorded" in html
    assert "1 record has an unknown certifier" in text
    # Only "half" has finite points: (0, 0.9) for accuracy; no fraction, no smoothing marker.
    svg = chart(html)
    assert svg.count("<polyline") == 1
    assert "Counterexample" in text and "not saved" in text
    assert "The Lipschitz constant is false" in text
    assert "No minimal-norm attack recorded empirical radii" in text
    assert "No attack check was recorded" in text


def test_section_is_well_formed_and_escaped(report_dir: Path) -> None:
    results = make_results()
    results["evaluations"]["certificates"][0]["lipschitz"]["description"] = "<script>x</script>"
    results["evaluations"]["soundness"][0]["checks"][0]["attack"] = "<b>pgd</b>"
    results["evaluations"]["soundness"].append(soundness_entry())
    results["evaluations"]["certificates"].append(lipschitz_entry())
    html = render_html(results, report_dir=report_dir)
    checker = BalanceChecker()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert "<script>" not in html and "&lt;b&gt;pgd&lt;/b&gt;" in html
    assert not any(
        math.isnan(float(v)) for v in re.findall(r'(?<=[ ",])(-?\d+\.\d+)(?=[ ,"])', html)
    )


def test_the_colour_bar_matches_the_colours_the_record_draws_radius_maps_with() -> None:
    # The record draws the PNGs, the report the colour bar; the layers keep them apart, so
    # this test keeps their two copies of the stops equal.
    from audit.record.entries import _VIRIDIS

    assert [c for _, c in VIRIDIS_STOPS] == ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in _VIRIDIS]

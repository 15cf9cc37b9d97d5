"""The report's plots (issue 11, part 3): claim thresholds and intervals over the curves,
per-class IoU under attack, the log-log soundness scatter, the class palette setting, alt text
and a baseline run's curves.  Checked on the rendered SVG and the builders' geometry."""

from __future__ import annotations

import copy
import itertools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_report_attacks import CLEAN_MIOU, FAILED_EVAL, PASSED_EVAL, make_attack_results
from test_report_certificates import LIP_ID, make_results

from audit.config import Settings, resolve_settings
from audit.data.synthetic import STREET_PALETTE
from audit.errors import ConfigError
from audit.record.entries import per_class_iou
from audit.record.images import COLORBLIND_PALETTE, class_palette, colorblind_palette
from audit.report import render_html
from audit.report.attacks import build_attacks
from audit.report.certificates import build_certificates
from audit.report.certified import certified_curves

# -- helpers ------------------------------------------------------------------------------


def _attack_claim(nodeid: str, evaluation: str, metric: str, low: float, high: float) -> dict:
    return {
        "nodeid": f"robust::{nodeid}",
        "id": nodeid,
        "kind": "attack",
        "metric": metric,
        "params": {"metric": metric, "norm": "linf"},
        "threshold": {"min": 0.55, "max": None},
        "interval": {"low": low, "high": high, "confidence": 0.95},
        "verdict": "failed",
        "evidence": {"evaluation": evaluation},
    }


def _results_with_claims() -> dict[str, Any]:
    results = make_attack_results()
    results["claims"] = [
        _attack_claim("pgd-miou", FAILED_EVAL, "miou", 0.38, 0.44),
        _attack_claim("fgsm-ratio", PASSED_EVAL, "iou_ratio", 0.6, 0.8),
        _attack_claim("fgsm-pa", PASSED_EVAL, "pixel_accuracy", 0.6, 0.8),
    ]
    return results


def _linf_panel(results: dict[str, Any]) -> dict[str, Any]:
    context = build_attacks(results)
    assert context is not None
    return context["panels"][0]


def _y_of(panel: dict[str, Any], value: float) -> float:
    # the panels' y axis is linear from 0 (bottom) to the top tick
    top = float(panel["y_ticks"][-1]["label"])
    return panel["plot_top"] + (1 - value / top) * (panel["plot_bottom"] - panel["plot_top"])


def _charts(html: str, figure: str) -> list[str]:
    return re.findall(rf'<figure class="{figure}">.*?</figure>', html, flags=re.S)


# -- thresholds and intervals on the epsilon curves ----------------------------------------


def test_attack_thresholds_are_drawn_on_the_ratio_axis_converted_from_miou() -> None:
    panel = _linf_panel(_results_with_claims())
    by_label = {line["label"]: line for line in panel["thresholds"]}
    # the IoU-ratio claim at its own value; the mIoU claim divided by the clean mIoU
    assert by_label["fgsm-ratio ≥ 0.55"]["y"] == pytest.approx(_y_of(panel, 0.55), abs=0.1)
    converted = 0.55 / CLEAN_MIOU
    (miou_line,) = [line for line in panel["thresholds"] if line["label"].startswith("pgd-miou")]
    assert miou_line["y"] == pytest.approx(_y_of(panel, converted), abs=0.1)
    assert "mIoU ≥ 0.55 over clean mIoU 0.768" in miou_line["title"]
    assert miou_line["label"] == f"pgd-miou ≥ {converted:.4g}"  # not 0.716146...
    # a pixel-accuracy claim has no place on the IoU-ratio axis: counted, not drawn
    assert panel["other_metric_claims"] == 1
    assert not any("fgsm-pa" in line["title"] for line in panel["thresholds"])
    # one error bar per drawn claim, from its interval (converted the same way)
    bars = panel["intervals"]
    assert len(bars) == 2
    miou_bar = next(bar for bar in bars if bar["title"].startswith("pgd-miou"))
    ys = [float(v) for v in re.findall(r"V([\d.]+)", miou_bar["path"])]
    assert ys == [pytest.approx(_y_of(panel, 0.44 / CLEAN_MIOU), abs=0.1)]


def test_a_sweep_shares_one_threshold_line_over_its_epsilons(tmp_path: Path) -> None:
    results = make_attack_results()
    fgsm = [a for a in results["evaluations"]["attacks"] if a["attack"] == "fgsm"]
    results["claims"] = [
        {
            **_attack_claim(f"fgsm[linf-{a['eps_text']}]", a["id"], "iou_ratio", 0.5, 0.9),
            "interval": None,
        }
        for a in fgsm
    ]
    panel = _linf_panel(results)
    (line,) = panel["thresholds"]
    assert line["label"] == "fgsm ≥ 0.55"
    xs = sorted(point["x"] for point in panel["lines"][0]["points"])
    assert line["x1"] < xs[0] and line["x2"] > xs[-1]
    assert panel["intervals"] == []
    svg = _charts(render_html(results, report_dir=tmp_path), "attack-chart")[0]
    assert svg.count('<g class="claim-threshold">') == 1
    assert 'stroke-dasharray="8 3 2 3"' in svg and ">claim threshold</text>" in svg


# -- thresholds and intervals on the radius curves -----------------------------------------


def test_certified_claims_draw_threshold_and_interval_at_their_radius(tmp_path: Path) -> None:
    results = make_results()
    certified = [c for c in results["claims"] if c["kind"] == "certified"]
    assert certified
    for claim in certified:
        claim.update(
            metric="certified_pixel_accuracy",
            threshold={"min": 0.3, "max": None},
            interval={"low": 0.5, "high": 0.7},
        )
    context = build_certificates(results)
    assert context is not None and context["chart"] is not None
    chart = context["chart"]
    assert chart["thresholds"] and chart["intervals"]
    top, bottom = chart["plot_top"], chart["plot_bottom"]
    threshold = certified[0]["threshold"]["min"]
    assert chart["thresholds"][0]["y"] == pytest.approx(
        bottom - threshold * (bottom - top), abs=0.1
    )
    # a certified-mIoU claim is another quantity: not drawn on the accuracy axis
    for claim in certified:
        claim["metric"] = "certified_miou"
    context = build_certificates(results)
    assert context is not None and context["chart"]["thresholds"] == []
    html = render_html(make_results(), report_dir=tmp_path)
    assert "<title>Certified pixel accuracy against L2 radius:" in html


# -- baseline overlay ----------------------------------------------------------------------


def test_baseline_curves_are_dotted_in_the_series_colour(tmp_path: Path) -> None:
    results = make_attack_results()
    attacks = results["evaluations"]["attacks"]
    rows = [{"evaluation": "clean", "metric": "miou", "old": 0.8, "new": CLEAN_MIOU}]
    rows += [
        {"evaluation": a["id"], "metric": "miou", "old": a["metrics"]["miou"] + 0.04}
        for a in attacks
        if a["attack"] == "pgd" and a["norm"] == "linf"
    ]
    results["baseline"] = {"evaluations": rows}
    panel = _linf_panel(results)
    (line,) = panel["baselines"]
    pgd = next(item for item in panel["lines"] if item["label"].startswith("pgd"))
    assert line["color"] == pgd["color"]
    first = next(a for a in attacks if a["id"] == rows[1]["evaluation"])
    y = float(line["points_attr"].split()[0].split(",")[1])
    # the baseline's ratio is its attacked mIoU over its own clean mIoU
    assert y == pytest.approx(_y_of(panel, (first["metrics"]["miou"] + 0.04) / 0.8), abs=0.1)
    svg = _charts(render_html(results, report_dir=tmp_path), "attack-chart")[0]
    assert re.search(r'<polyline class="baseline" [^>]*stroke-dasharray="2 3"', svg)
    assert ">baseline</text>" in svg
    # no clean row: no ratio can be formed, so nothing is drawn
    results["baseline"] = {"evaluations": rows[1:]}
    assert _linf_panel(results)["baselines"] == []


def test_certified_baseline_reads_the_radius_rows() -> None:
    results = make_results()
    context = build_certificates(results)
    assert context is not None
    entry = results["evaluations"]["certificates"][0]
    baseline = {
        (LIP_ID, f"certified_pixel_accuracy@{r:g}"): 0.5 for r in entry["radii"] if r is not None
    }
    assert entry["id"] == LIP_ID
    from audit.report.certificates import LipschitzSources, claim_radii, lipschitz_entry

    cert = lipschitz_entry(0, entry, "#0072B2", LipschitzSources(), [], [])
    chart = certified_curves([cert], [], claim_radii([]), baseline)
    assert chart is not None
    (line,) = chart["baselines"]
    ys = {float(p.split(",")[1]) for p in line["points_attr"].split()}
    bottom, top = chart["plot_bottom"], chart["plot_top"]
    assert len(ys) == 1 and ys.pop() == pytest.approx(bottom - 0.5 * (bottom - top), abs=0.1)
    assert line["color"] == "#0072B2"


# -- per-class IoU under attack ------------------------------------------------------------


def test_per_class_iou_is_read_from_the_confusion_matrix() -> None:
    cm = torch.zeros(2, 3, 3, dtype=torch.int64)
    cm[0, 0, 0], cm[0, 0, 1], cm[1, 1, 1] = 6, 2, 4  # class 2: in neither truth nor prediction
    assert per_class_iou(cm, ["road", "car", "sky"]) == {"road": 0.75, "car": 4 / 6, "sky": None}


def test_per_class_table_lists_worst_classes_first(tmp_path: Path) -> None:
    results = make_attack_results()
    names = ["road", "car", "person"]
    results["evaluations"]["clean"] = {
        "per_class": [
            {"name": n, "iou": v, "accuracy": v, "support": 10, "color": c}
            for n, v, c in zip(
                names, (0.9, 0.8, 0.7), ([1, 2, 3], [4, 5, 6], [7, 8, 9]), strict=True
            )
        ]
    }
    for entry in results["evaluations"]["attacks"]:
        entry["per_class"] = {"road": 0.8, "car": 0.1, "person": None}
    strongest = next(a for a in results["evaluations"]["attacks"] if a["id"] == FAILED_EVAL)
    strongest["per_class"] = {"road": 0.6, "car": 0.05, "person": 0.3}
    # at 32/255 the pgd entry has the lowest mIoU: it is the strongest at the largest eps
    top = max(
        (a for a in results["evaluations"]["attacks"] if a["norm"] == "linf"),
        key=lambda a: (a["eps"], -a["metrics"]["miou"] if a["attack"] != "noise" else -9),
    )
    top["per_class"] = {"road": 0.5, "car": 0.02, "person": 0.2}
    context = build_attacks(results)
    assert context is not None
    table = context["per_class"]
    linf = table["columns"][0]
    assert linf["id"] == top["id"] and linf["eps"] == "32/255"
    assert [row["name"] for row in table["rows"]] == ["car", "person", "road"]
    car = table["rows"][0]
    assert car["clean"] == "0.800" and car["cells"][0] == {"iou": "0.020", "delta": "-0.780"}
    assert car["color"] == "rgb(4, 5, 6)"
    html = render_html(results, report_dir=tmp_path)
    assert "<h3>Per-class IoU under attack</h3>" in html


# -- the soundness scatter -----------------------------------------------------------------


def test_soundness_scatter_is_log_log_with_the_diagonal_corner_to_corner() -> None:
    context = build_certificates(make_results())
    assert context is not None
    sc = context["soundness"][0]["scatter"]
    diagonal = sc["diagonal"]
    assert (diagonal["x1"], diagonal["y1"]) == (sc["plot_left"], sc["plot_bottom"])
    assert (diagonal["x2"], diagonal["y2"]) == (sc["plot_right"], sc["plot_top"])
    decades = [t for t in sc["x_ticks"] if t["decade"]]
    labels = [t["label"] for t in decades]
    assert all(re.fullmatch(r"1(e-?\d+)?|0\.0*1|10*", label) for label in labels)
    gaps = [b["x"] - a["x"] for a, b in itertools.pairwise(decades)]
    assert max(gaps) - min(gaps) < 0.2  # equal steps per decade: a log axis
    assert sc["same_scale"] and sc["violations"]
    for point in sc["violations"]:
        # below y = x: further down (larger y) than the diagonal at that x
        at = diagonal["y1"] + (diagonal["y2"] - diagonal["y1"]) * (point["x"] - diagonal["x1"]) / (
            diagonal["x2"] - diagonal["x1"]
        )
        assert point["y"] > at
    assert {g["label"] for g in sc["guides"]} <= {"×2", "×10"}


def test_zero_radii_sit_on_the_axis_and_are_counted() -> None:
    results = make_results()
    results["evaluations"]["soundness"][0]["checks"][1]["scatter"] = [[0.0, 0.2], [0.1, 0.3]]
    context = build_certificates(results)
    assert context is not None
    sc = context["soundness"][0]["scatter"]
    assert sc["zeros"] == 1


# -- alt text ------------------------------------------------------------------------------


def test_every_chart_has_a_title_naming_attack_eps_and_trend(tmp_path: Path) -> None:
    html = render_html(_results_with_claims(), report_dir=tmp_path)
    linf = _charts(html, "attack-chart")[0]
    title = re.search(r"<svg[^>]*>\s*<title>(.*?)</title>", linf, flags=re.S)
    assert title
    text = title.group(1)
    assert "IoU ratio under pgd (steps=20, restarts=1) (Linf) at eps 0.25/255, 1/255" in text
    assert re.search(r"falls from \d\.\d\d to \d\.\d\d", text)
    context = build_attacks(_results_with_claims())
    assert context is not None
    cells = context["examples"][0]["examples"][0]["cells"]
    adversarial = next(cell for cell in cells if cell["title"] == "adversarial input")
    assert (
        adversarial["alt"] == "adversarial input of synthetic-0005, under fgsm (Linf) at eps 4/255"
    )
    certificates = render_html(make_results(), report_dir=tmp_path)
    for figure in ("cert-chart", "cert-scatter"):
        for chart in _charts(certificates, figure):
            assert re.search(r"<svg[^>]*>\s*<title>[^<]{20,}</title>", chart)


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    results = _results_with_claims()
    results["baseline"] = {"evaluations": [{"evaluation": "clean", "metric": "miou", "old": 0.8}]}
    first = render_html(results, report_dir=tmp_path)
    assert render_html(copy.deepcopy(results), report_dir=tmp_path) == first
    assert "<script" not in first


# -- the class palette ---------------------------------------------------------------------

#: Machado, Oliveira & Fernandes (2009), deuteranopia at severity 1.0, on linear RGB
_DEUTERANOPIA = np.array(
    [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.01182, 0.04294, 0.968881]]
)
#: the least CIEDE2000 difference, under simulated deuteranopia, between two of the 8 classes'
#: colours of the colorblind palette (measured: 11.6, orange / yellow)
MIN_DE2000_8_CLASSES = 11.5


def _lab(rgb: tuple[int, int, int]) -> np.ndarray:
    c = np.asarray(rgb, dtype=float) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    seen = np.clip(_DEUTERANOPIA @ linear, 0, 1)
    xyz = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.072175],
         [0.0193339, 0.119192, 0.9503041]]
    ) @ seen  # fmt: skip
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p, h2p = math.degrees(math.atan2(b1, a1p)) % 360, math.degrees(math.atan2(b2, a2p)) % 360
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    l_mean, cp_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_mean = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_mean = (h1p + h2p) / 2
    else:
        h_mean = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(h_mean - 30))
        + 0.24 * math.cos(math.radians(2 * h_mean))
        + 0.32 * math.cos(math.radians(3 * h_mean + 6))
        - 0.20 * math.cos(math.radians(4 * h_mean - 63))
    )
    d_theta = 30 * math.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * math.sqrt(cp_mean**7 / (cp_mean**7 + 25**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_mean, 1 + 0.015 * cp_mean * t
    r_t = -math.sin(math.radians(2 * d_theta)) * r_c
    return math.sqrt(
        (d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h)
    )


def _least_difference(colours: Any) -> float:
    labs = [_lab(c) for c in colours]
    return min(_ciede2000(a, b) for a, b in itertools.combinations(labs, 2))


def test_ciede2000_matches_sharma_reference_pairs() -> None:
    # Sharma, Wu & Dalal (2005), pairs 1 and 17 of their test data
    assert _ciede2000(np.array([50, 2.6772, -79.7751]), np.array([50, 0, -82.7485])) == (
        pytest.approx(2.0425, abs=1e-4)
    )
    assert _ciede2000(np.array([50, 2.5, 0]), np.array([73, 25, -18])) == pytest.approx(
        27.1492, abs=1e-4
    )


def test_colorblind_palette_stays_apart_under_deuteranopia() -> None:
    eight = colorblind_palette(8)
    assert eight == COLORBLIND_PALETTE
    assert _least_difference(eight) > MIN_DE2000_8_CLASSES
    # ... and apart from the black of ignored pixels
    assert all(_ciede2000(_lab(c), _lab((0, 0, 0))) > 20 for c in eight)
    # the dataset palette it replaces: person and vegetation nearly merge
    assert _least_difference(STREET_PALETTE) < 3
    # beyond 8 classes the hues repeat in darker and lighter tiers (documented minimums)
    assert _least_difference(colorblind_palette(16)) > 7
    assert _least_difference(colorblind_palette(24)) > 4
    assert len(set(colorblind_palette(24))) == 24


def test_dataset_palette_is_the_default_and_unchanged() -> None:
    assert Settings().palette == "dataset"
    assert class_palette("dataset", STREET_PALETTE) == STREET_PALETTE
    assert class_palette("colorblind", STREET_PALETTE) == COLORBLIND_PALETTE
    with pytest.raises(ValueError, match="unknown palette"):
        class_palette("rainbow", STREET_PALETTE)


def test_palette_setting_from_file_and_command_line(tmp_path: Path) -> None:
    (tmp_path / "audit.toml").write_text('palette = "colorblind"\n')
    settings = resolve_settings(rootdir=tmp_path, cli={}, invocation_dir=tmp_path)
    assert settings.palette == "colorblind"
    assert settings.sources["palette"] == str(tmp_path / "audit.toml")
    settings = resolve_settings(
        rootdir=tmp_path, cli={"palette": "dataset"}, invocation_dir=tmp_path
    )
    assert settings.palette == "dataset"
    with pytest.raises(ConfigError, match=r"command line, key 'palette': expected dataset or"):
        resolve_settings(rootdir=tmp_path, cli={"palette": "rainbow"}, invocation_dir=tmp_path)

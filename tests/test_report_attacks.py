"""The report's Attacks section: IoU-ratio curves, table, diagnostics, worst examples."""

from __future__ import annotations

import copy
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from report_helpers import drawn_images

from audit.record.diagnostics import CHECKS
from audit.report import render_html
from audit.report.attacks import MARKERS, PALETTE, build_attacks

LINF_EPS = (("0.25/255", 0.25 / 255), ("1/255", 1 / 255), ("4/255", 4 / 255), ("32/255", 32 / 255))
L2_EPS = (("0.25", 0.25), ("0.5", 0.5), ("1", 1.0))
PGD_PARAMS = {"steps": 20, "restarts": 1}
CLEAN_MIOU = 0.768
EXAMPLE_KEYS = (
    "image",
    "adversarial",
    "perturbation",
    "ground_truth",
    "prediction_clean",
    "prediction_adv",
)
FAILED_EVAL = "pgd-linf-4-255-1a2b3c"
PASSED_EVAL = "fgsm-linf-4-255-9f8e7d"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def attack_entry(
    attack: str,
    norm: str,
    eps_text: str,
    eps: float,
    miou: float,
    *,
    family: str = "iterative",
    params: dict[str, Any] | None = None,
    eval_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": eval_id or f"{_slug(attack)}-{norm}-{_slug(eps_text)}",
        "attack": attack,
        "library": "native",
        "family": family,
        "params": dict(params or {}),
        "norm": norm,
        "eps": eps,
        "eps_text": eps_text,
        "resolution": [128, 256],
        "num_samples": 8,
        "metrics": {"miou": miou, "pixel_accuracy": miou + 0.2, "mean_class_accuracy": miou + 0.1},
        "clean_miou": CLEAN_MIOU,
        "iou_ratio": miou / CLEAN_MIOU,
        "success_rate": 1 - miou / CLEAN_MIOU,
        "noise": {"miou": 0.76, "success_rate": 0.01},
        "perturbation": {"linf_max": eps, "l2_mean": 2.1} if norm == "linf" else {"l2_mean": eps},
        "gradients": {"passes": 160, "zero": 0, "nonfinite": 0},
        "forward_passes": 180,
        "backward_passes": 160,
        "seconds": 3.2,
        "examples": [],
    }


def example(eval_id: str, index: int, name: str) -> dict[str, Any]:
    files = dict(
        zip(
            EXAMPLE_KEYS,
            ("image", "adv", "delta", "gt", "pred", "pred-adv"),
            strict=True,
        )
    )
    return {
        "name": name,
        "pixel_accuracy_clean": 0.91,
        "pixel_accuracy_adv": 0.12,
        **{key: f"attacks/{eval_id}/{index}-{stem}.png" for key, stem in files.items()},
    }


def make_attack_results() -> dict[str, Any]:
    """Three attacks (one with two norms) over an epsilon sweep, plus the noise baseline."""
    attacks = []
    for i, (text, eps) in enumerate(LINF_EPS):
        attacks.append(
            attack_entry("fgsm", "linf", text, eps, 0.74 - 0.08 * i, family="single_step")
        )
        attacks.append(attack_entry("ifgsm", "linf", text, eps, 0.72 - 0.12 * i))
        attacks.append(attack_entry("pgd", "linf", text, eps, 0.7 - 0.15 * i, params=PGD_PARAMS))
        attacks.append(attack_entry("noise", "linf", text, eps, 0.767 - 0.002 * i, family="random"))
    for i, (text, eps) in enumerate(L2_EPS):
        attacks.append(attack_entry("pgd", "l2", text, eps, 0.6 - 0.1 * i, params=PGD_PARAMS))
        attacks.append(attack_entry("noise", "l2", text, eps, 0.766, family="random"))
    pgd = next(a for a in attacks if a["attack"] == "pgd" and a["eps_text"] == "4/255")
    pgd.update(
        id=FAILED_EVAL,
        metrics={"miou": 0.41, "pixel_accuracy": 0.62, "mean_class_accuracy": 0.55},
        iou_ratio=0.534,
        success_rate=0.37,
    )
    pgd["examples"] = [example(FAILED_EVAL, 0, "synthetic-0003")]
    fgsm = next(a for a in attacks if a["attack"] == "fgsm" and a["eps_text"] == "4/255")
    fgsm["id"] = PASSED_EVAL
    fgsm["examples"] = [example(PASSED_EVAL, 0, "synthetic-0005")]
    return {
        "schema_version": 1,
        "complete": True,
        "status": "failed",
        "claims": [
            {
                "nodeid": "robust::pgd-miou",
                "kind": "attack",
                "statement": "mIoU under PGD stays at least 0.55",
                "verdict": "failed",
                "evidence": {"evaluation": FAILED_EVAL},
            },
            {
                "nodeid": "robust::fgsm-miou",
                "kind": "attack",
                "statement": "mIoU under FGSM stays at least 0.4",
                "verdict": "passed",
                "evidence": {"evaluation": PASSED_EVAL},
            },
        ],
        "evaluations": {"attacks": attacks},
        "diagnostics": [
            {
                "check": "iterative_weaker",
                "attack": "ifgsm",
                "norm": "linf",
                "eps_text": "4/255",
                "message": "ifgsm (mIoU 0.52) is weaker than fgsm (mIoU 0.47) at linf 4/255: "
                "iterative attacks should be at least as strong; gradient masking?",
            }
        ],
        "diagnostic_checks": dict(CHECKS),
    }


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    for eval_id in (FAILED_EVAL, PASSED_EVAL):
        folder = tmp_path / "attacks" / eval_id
        folder.mkdir(parents=True)
        for key, stem in zip(
            EXAMPLE_KEYS, ("image", "adv", "delta", "gt", "pred", "pred-adv"), strict=True
        ):
            Image.new("RGB", (8, 4), (len(key) * 20, 90, 160)).save(folder / f"0-{stem}.png")
    return tmp_path


def section(html: str, key: str = "attacks") -> str:
    start = html.index(f'<section id="{key}"')
    return html[start : html.index("</section>", start)]


def strip_tags(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def charts(html: str) -> list[str]:
    return re.findall(r'<figure class="attack-chart">.*?</figure>', html, flags=re.S)


def test_curves_have_one_line_per_attack_group_and_norm(report_dir: Path) -> None:
    html = render_html(make_attack_results(), report_dir=report_dir)
    linf, l2 = charts(section(html))

    # linf: fgsm, ifgsm, pgd (steps=20, restarts=1) and the noise baseline; l2: pgd and noise.
    assert linf.count("<polyline") == 4 and l2.count("<polyline") == 2
    assert "Linf threat model" in linf and "L2 threat model" in l2
    assert "epsilon (Linf, [0,1] pixel space; log scale)" in linf
    assert "input resolution 128 × 256 (H × W)" in linf
    for label in ("0.25/255", "1/255", "4/255", "32/255"):
        assert f">{label}</text>" in linf
    for label in ("fgsm", "ifgsm", "pgd (steps=20, restarts=1)", "noise"):
        assert f">{label}</text>" in linf
    # The noise baseline is dashed grey; attack lines are solid in distinct colours.
    polylines = re.findall(r"<polyline [^>]*>", linf)
    strokes = [re.search(r'stroke="([^"]+)"', p).group(1) for p in polylines]  # type: ignore[union-attr]
    assert len(set(strokes)) == 4
    assert ["stroke-dasharray" in p for p in polylines] == [False, False, False, True]
    # One marker per point: 4 groups x 4 epsilons.
    assert len(re.findall(r"<path d=\"[^\"]+\" fill=[^>]*><title>", linf)) == 16
    assert "dashed grey: random noise of the same norm" in linf


def test_curve_geometry_is_log_x_and_ratio_y() -> None:
    context = build_attacks(make_attack_results())
    assert context is not None
    linf = context["panels"][0]
    xs = {tick["label"]: tick["x"] for tick in linf["x_ticks"]}
    # 0.25 -> 1 -> 4 are equal steps on a log axis; 4 -> 32 is 1.5 of them.
    assert xs["1/255"] - xs["0.25/255"] == pytest.approx(xs["4/255"] - xs["1/255"], abs=0.2)
    assert xs["32/255"] - xs["4/255"] == pytest.approx(1.5 * (xs["4/255"] - xs["1/255"]), abs=0.2)
    ys = {tick["label"]: tick["y"] for tick in linf["y_ticks"]}
    assert list(ys) == ["0", "0.25", "0.5", "0.75", "1"]
    assert ys["0"] == linf["plot_bottom"] and ys["1"] == linf["plot_top"]
    # The same attack keeps its colour and marker in both panels.
    pgd = [
        next(line for line in panel["lines"] if line["label"].startswith("pgd"))
        for panel in context["panels"]
    ]
    assert pgd[0]["color"] == pgd[1]["color"] and pgd[0]["shape"] == pgd[1]["shape"]
    colours = [line["color"] for line in linf["lines"][:3]]
    shapes = [line["shape"] for line in linf["lines"][:3]]
    assert colours == list(PALETTE[:3]) and shapes == list(MARKERS[:3])


def test_ratio_above_one_extends_the_y_axis() -> None:
    results = make_attack_results()
    results["evaluations"]["attacks"][0]["iou_ratio"] = 1.3
    context = build_attacks(results)
    assert context is not None
    assert context["panels"][0]["y_ticks"][-1]["label"] == "1.5"


def test_table_lists_values_sorted_by_group_then_epsilon(report_dir: Path) -> None:
    html = section(render_html(make_attack_results(), report_dir=report_dir))
    table = html[html.index('<table class="attack-table attack-evaluations">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr[^>]*>.*?</tr>", table, flags=re.S)[1:]
    cells = [
        [strip_tags(cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in rows
    ]

    assert len(rows) == 4 * 4 + 2 * 3
    assert [row[0].split()[0] for row in cells] == (
        ["fgsm"] * 4 + ["ifgsm"] * 4 + ["pgd"] * 7 + ["noise"] * 7
    )
    assert [row[2].split()[0] for row in cells[:4]] == ["0.25/255", "1/255", "4/255", "32/255"]
    # Within the pgd group the Linf sweep comes before the L2 one.
    assert [row[1] for row in cells if row[0].startswith("pgd")] == ["Linf"] * 4 + ["L2"] * 3
    pgd = next(row for row in cells if "robust::pgd-miou" in row[0])
    assert pgd[0].startswith("pgd (steps=20, restarts=1) native · iterative")
    assert pgd[0].endswith("robust::pgd-miou FAIL worst examples")
    assert pgd[1:] == [
        "Linf",
        "4/255 0.01569",
        "128×256",
        "8",
        "0.410",
        "0.534",
        "0.620",
        "37.0%",
        "0.760",
        "180 / 160",
        "3.2 s",
    ]
    assert re.search(r'<tr class="claim-fail">\s*<td>.*?robust::pgd-miou', table, flags=re.S)
    assert table.count('class="claim-fail"') == 1
    assert 'title="measured max Linf 0.01569, mean L2 2.1"' in table
    assert "exceeds epsilon" not in table


def test_perturbation_beyond_epsilon_is_flagged(report_dir: Path) -> None:
    results = make_attack_results()
    entry = results["evaluations"]["attacks"][0]
    entry["perturbation"] = {"linf_max": 2 * entry["eps"], "l2_mean": 99.0}
    text = strip_tags(section(render_html(results, report_dir=report_dir)))
    assert text.count("exceeds epsilon") == 1
    assert "max Linf 0.001961 exceeds epsilon" in text


def test_diagnostics_warn_when_flagged_and_name_checks_when_clear(report_dir: Path) -> None:
    results = make_attack_results()
    flagged = strip_tags(section(render_html(results, report_dir=report_dir)))
    assert "Possible gradient masking or a weak evaluation:" in flagged
    assert "iterative_weaker (ifgsm linf 4/255)" in flagged
    assert "ifgsm (mIoU 0.52) is weaker than fgsm (mIoU 0.47)" in flagged
    assert "No gradient-masking signs" not in flagged

    results["diagnostics"] = []
    results["diagnostic_coverage"] = {
        check: {"status": "clear", "evaluations": 3, "reason": None} for check in CHECKS
    }
    clear = strip_tags(section(render_html(results, report_dir=report_dir)))
    assert "No gradient-masking signs from the checks that could judge this run:" in clear
    assert all(check in clear for check in CHECKS) and len(CHECKS) == 5
    assert "Possible gradient masking" not in clear and "could not judge" not in clear

    # a check with nothing to judge is never among the clear ones (a green box once said
    # all five were clear when two could not run)
    for check in ("iterative_weaker", "low_success"):
        results["diagnostic_coverage"][check] = {
            "status": "not applicable", "evaluations": 0, "reason": f"needs more for {check}",
        }  # fmt: skip
    partly = strip_tags(section(render_html(results, report_dir=report_dir)))
    judged = partly.split("could not judge")[0]
    assert "iterative_weaker" not in judged and "not_monotonic" in judged
    assert "2 of 5 checks could not judge this run" in partly
    assert "needs more for low_success" in partly

    del results["diagnostic_coverage"]  # a record from before coverage was recorded
    unknown = strip_tags(section(render_html(results, report_dir=report_dir)))
    assert "No gradient-masking signs" not in unknown
    assert "5 of 5 checks could not judge" in unknown

    del results["diagnostic_checks"]  # an older record: which checks ran is unknown
    older = strip_tags(section(render_html(results, report_dir=report_dir)))
    assert "No diagnostics were recorded" in older
    assert "No gradient-masking signs" not in older

    del results["diagnostics"]
    missing = strip_tags(section(render_html(results, report_dir=report_dir)))
    assert "No diagnostics were recorded" in missing
    assert "No gradient-masking signs" not in missing


def test_worst_examples_embed_images_and_open_failed_claims(report_dir: Path) -> None:
    page = render_html(make_attack_results(), report_dir=report_dir)
    html = section(page)

    blocks = re.findall(r"<details [^>]*>.*?</details>", html, flags=re.S)
    assert len(blocks) == 2
    failed = next(b for b in blocks if FAILED_EVAL in b)
    passed = next(b for b in blocks if PASSED_EVAL in b)
    assert re.match(r'<details id="attack-examples-\d+" class="attack-examples" open>', failed)
    assert not re.match(r"<details [^>]*\bopen\b", passed)
    for block, eval_id in ((failed, FAILED_EVAL), (passed, PASSED_EVAL)):
        drawn = drawn_images(block, page)
        assert [href for _, href, _ in drawn] == [
            f"attacks/{eval_id}/0-{stem}.png"
            for stem in ("image", "adv", "delta", "gt", "pred", "pred-adv")
        ]
        assert all(uri.startswith("data:image/webp;base64,") for _, _, uri in drawn)
    text = strip_tags(failed)
    for caption in ("input", "adversarial input", "perturbation", "amplified for display"):
        assert caption in text
    assert "ground truth" in text and "clean prediction" in text
    assert "adversarial prediction" in text
    assert "clean pixel acc. 0.910" in text and "adv. pixel acc. 0.120" in text
    anchor = re.match(r'<details id="([^"]+)"', failed).group(1)  # type: ignore[union-attr]
    assert f'href="#{anchor}"' in html


def test_section_sits_after_confusion_and_is_hidden_without_attacks(report_dir: Path) -> None:
    results = make_attack_results()
    results["evaluations"]["clean"] = {"confusion_matrix": [[3, 1], [0, 4]], "metrics": {}}
    html = render_html(results, report_dir=report_dir)
    assert html.index('id="confusion"') < html.index('id="attacks"') < html.index('id="provenance"')
    assert '<a href="#attacks">Attacks</a>' in html

    for attacks in ([], None, "garbage"):
        results["evaluations"]["attacks"] = attacks
        html = render_html(results, report_dir=report_dir)
        assert 'id="attacks"' not in html and 'href="#attacks"' not in html
    del results["evaluations"]
    assert 'id="attacks"' not in render_html(results, report_dir=report_dir)


def test_partial_records_render_as_na(tmp_path: Path) -> None:
    nan = float("nan")
    results = {
        "schema_version": 1,
        "evaluations": {
            "attacks": [
                {"attack": "pgd"},
                {
                    "id": "half",
                    "attack": "ifgsm",
                    "norm": "linf",
                    "eps": 4 / 255,
                    "eps_text": None,
                    "params": None,
                    "metrics": {"miou": nan, "pixel_accuracy": None},
                    "clean_miou": 0.0,
                    "iou_ratio": nan,
                    "success_rate": float("inf"),
                    "noise": None,
                    "perturbation": "odd",
                    "gradients": {"zero": 3, "nonfinite": None},
                    "forward_passes": None,
                    "seconds": nan,
                    "resolution": None,
                    "examples": ["not a mapping", {"name": None, "image": None}],
                },
                {"id": "zero-eps", "attack": "fgsm", "norm": "L2", "eps": 0, "iou_ratio": 1.0},
                {
                    "id": "derived",
                    "attack": "fgsm",
                    "norm": "linf",
                    "eps": 0.01,
                    "metrics": {"miou": 0.3},
                    "clean_miou": 0.6,
                },
                "not a mapping",
                None,
            ]
        },
        "diagnostics": [None, {"check": "bad_gradients"}],
        "claims": [{"verdict": "failed", "evidence": {"evaluation": "half"}}, None],
    }

    html = section(render_html(results, report_dir=tmp_path))
    text = strip_tags(html)

    assert "could not be rendered" not in html
    assert "n/a" in text and not re.search(r"\b(nan|inf)\b", text)
    assert "3 all-zero grad." in text and "non-finite grad." not in text
    assert "No image recorded" in html
    assert "bad_gradients" in text and "no message recorded" in text
    # Only "derived" has a positive epsilon and a ratio (0.3 / 0.6) to plot.
    (linf,) = charts(html)
    assert linf.count("<polyline") == 1 and "IoU ratio 0.500" in linf
    assert "1 evaluation is not drawn" in linf


def test_min_norm_table(tmp_path: Path) -> None:
    results = make_attack_results()
    results["evaluations"]["min_norm"] = [
        {
            "id": "fmn-linf",
            "attack": "fmn",
            "norm": "linf",
            "num_samples": 8,
            "image_radius": {"median": 2 / 255, "values": [1 / 255, 2 / 255, 3 / 255]},
            "pixel_radius": {
                "median": 4 / 255,
                "quantiles": {"0.1": 1 / 255, "0.25": 2 / 255, "0.5": 4 / 255, "0.75": None},
                "finite_fraction": 0.97,
            },
        },
        {"id": "broken", "pixel_radius": None},
    ]
    html = section(render_html(results, report_dir=tmp_path))
    table = html[html.index("Minimum-norm attacks") :]
    text = strip_tags(table)

    assert "fmn" in text and "0.007843 (2/255)" in text and "0.01569 (4/255)" in text
    assert "1/255 2/255 4/255 n/a n/a" in text
    assert (
        "Pixel q10" in text and "Pixel q90" in text and "Pixels flipped" in text and "97.0%" in text
    )
    assert text.count("n/a") >= 2 + 5  # broken: everything; fmn: q75 and q90

    del results["evaluations"]["attacks"]
    html = render_html(results, report_dir=tmp_path)
    assert 'id="attacks"' in html and "No gradient-masking signs" not in html


# Elements HTML lets stand without an end tag; everything else must be closed, in order.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class BalanceChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> at {self.getpos()} closes {self.stack[-1:]}")
            return
        self.stack.pop()


def test_section_is_well_formed_and_escaped(report_dir: Path) -> None:
    results = copy.deepcopy(make_attack_results())
    results["evaluations"]["attacks"][0]["attack"] = "<script>x</script>"
    results["diagnostics"][0]["message"] = "<b>bold</b>"
    html = render_html(results, report_dir=report_dir)

    checker = BalanceChecker()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert "<script>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert not any(
        math.isnan(float(v)) for v in re.findall(r'(?<=[ "])(-?\d+\.\d+)(?=[ ,"])', html)
    )

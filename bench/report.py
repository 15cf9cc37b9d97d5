"""Size and render time of the HTML report, against the audit it reports on.

    python bench/report.py [--images 8] [--large 500] [--repeats 5] [--device auto]
    python bench/report.py --skip-audit          # only the fabricated records

1. A real audit: the demo model, ``arnab2018`` + ``massena2025``, ``--images`` synthetic
   scenes, through :func:`audit.session.run_audit`.  Wall time of the whole audit and of
   what it does after the last claim (the record's summaries: noise baselines, example
   images; then the render), the size of ``index.html`` and of the report folder, and the
   median time of re-rendering the page from ``results.json`` (which must give the same
   bytes as the run's own render).
2. Fabricated records of the same shape (``tests/report_helpers.py``) over ``--images``
   and ``--large`` scenes: page size and median render time.  The audit time of the large
   one is not measured (hours on a CPU); the ratio uses the real audit's time scaled by
   the number of images, the way every evaluation scales.

Budget (issue 11): at most 5 MB of page and 5 s of render for the 8-image audit, render
time a small fraction of the audit, and a page that does not grow with the number of
images beyond its fixed gallery.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import audit.record.entries
import audit.session
from audit.config import Settings
from audit.report import render_html, render_report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# The tests' fabricated record, shared so that the benchmark renders what the test bounds.
from report_helpers import fabricate_record

MB = 1e6


@contextmanager
def timed(module: Any, name: str, totals: dict[str, float]) -> Iterator[None]:
    """Add the wall time of every call of ``module.name`` to ``totals[name]``."""
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def median_render(report_dir: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_report(report_dir)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_audit(root: Path, images: int, device: str, repeats: int) -> dict[str, Any]:
    report_dir = root / "audit"
    settings = Settings(
        model="demo",
        suites=("arnab2018", "massena2025"),
        report_dir=report_dir,
        device=device,
        limit=images,
    )
    totals: dict[str, float] = {}
    start = time.perf_counter()
    with (
        timed(audit.session, "summarise", totals),
        timed(audit.session, "render_report", totals),
        timed(audit.record.entries, "evaluate_noise", totals),
        timed(audit.record.entries, "write_adversarial_examples", totals),
        timed(audit.record.entries, "write_examples", totals),
        timed(audit.record.entries, "_write_radius_maps", totals),
    ):
        audit.session.run_audit(settings)
    total = time.perf_counter() - start
    page = (report_dir / "index.html").read_bytes()
    rerender = median_render(report_dir, repeats)
    images_written = sum(
        totals.get(k, 0.0)
        for k in ("write_adversarial_examples", "write_examples", "_write_radius_maps")
    )
    return {
        "audit_s": total,
        "summaries_s": totals.get("summarise", 0.0),
        "noise_s": totals.get("evaluate_noise", 0.0),
        "images_s": images_written,
        "render_in_run_s": totals.get("render_report", 0.0),
        "render_s": rerender,
        "html_bytes": len(page),
        "folder_bytes": folder_size(report_dir),
        "same_bytes": (report_dir / "index.html").read_bytes() == page,
    }


def fabricated(root: Path, images: int, repeats: int) -> dict[str, Any]:
    report_dir = root / f"fabricated-{images}"
    report_dir.mkdir()
    start = time.perf_counter()
    record = fabricate_record(report_dir, images=images)
    written = time.perf_counter() - start
    (report_dir / "results.json").write_text(json.dumps(record), encoding="utf-8")
    render_s = median_render(report_dir, repeats)
    page = (report_dir / "index.html").read_bytes()
    return {
        "images_s": written,
        "render_s": render_s,
        "html_bytes": len(page),
        "folder_bytes": folder_size(report_dir),
        "distinct_images": page.count(b"<symbol "),
        "same_bytes": render_html(record, report_dir=report_dir).encode() == page,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-audit", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segaudit-bench-report-") as tmp:
        root = Path(tmp)
        real = None
        if not args.skip_audit:
            real = real_audit(root, args.images, args.device, args.repeats)
            print(f"real audit, arnab2018 + massena2025, {args.images} images:")
            print(
                f"  audit {real['audit_s']:.1f} s; after the last claim: summaries "
                f"{real['summaries_s']:.2f} s (noise baselines {real['noise_s']:.2f} s, "
                f"example images {real['images_s']:.2f} s), render "
                f"{real['render_in_run_s']:.2f} s"
            )
            print(
                f"  index.html {real['html_bytes'] / MB:.2f} MB, folder "
                f"{real['folder_bytes'] / MB:.1f} MB; re-render {real['render_s']:.2f} s "
                f"(median of {args.repeats}), same bytes: {real['same_bytes']}"
            )
            print(f"  render / audit = {real['render_s'] / real['audit_s']:.4f}")
        for images in (args.images, args.large):
            fab = fabricated(root, images, args.repeats)
            print(f"fabricated record, {images} images:")
            print(
                f"  index.html {fab['html_bytes'] / MB:.2f} MB ({fab['distinct_images']} "
                f"distinct thumbnails), folder {fab['folder_bytes'] / MB:.1f} MB; render "
                f"{fab['render_s']:.2f} s (median of {args.repeats}), same bytes: "
                f"{fab['same_bytes']}; writing its images took {fab['images_s']:.2f} s"
            )
            if real is not None:
                estimate = real["audit_s"] * images / args.images
                print(
                    f"  render / audit = {fab['render_s'] / estimate:.5f} (audit time "
                    f"scaled from the real one: {estimate:.0f} s)"
                )


if __name__ == "__main__":
    main()

"""Built-in suites end to end: where an audit's time goes, by claim kind, old code against new.

    python bench/suites.py [--suites smoke,arnab2018,massena2025] [--images 8]
                           [--repeats 1] [--device cpu] [--baseline DIR]

Each run is one ``audit.session.run_audit`` of one suite on the demo model and ``--images``
synthetic scenes, in a fresh Python process started in an empty folder (so no evaluation
cache, Hypothesis database or warm import is shared between runs).  The process reports the
wall time of ``run_audit`` and, from its ``results.json``, every claim item's ``kind`` and
``duration_s``.  Per suite the script prints the time of each claim kind and its share of
the suite's total; what is left over (engine and record set-up outside the first claim, the
summaries after the last claim, the report) is its own row.  A suite with a
``certificate_soundness`` claim also gets that claim's share stated.

The model time: every image the audited model sees is counted, forward and backward (a
global forward hook on the model wrapper, a gradient hook on its output), and after the audit
the same process times the demo's forward pass, and a forward and backward pass to the
input, on the same images.  Their product is the suite's model time: what the passes its
budgets ask for cost with no harness around them, a floor no faster harness goes below.

``--baseline DIR`` times an older checkout beside the current code::

    git -C /work/main archive <commit> audit suites reports | tar -x -C DIR

Each side runs with ``PYTHONPATH`` set to its own root (the repository, or ``DIR``), and
the script checks that the process imported ``audit`` from there.  Each side runs the
suite files of its own checkout (their SHA-256 are compared), since a suite's settings are
part of what a version costs.  Runs of the two sides are interleaved, in alternating order,
so load on the machine falls on both; ``old/new`` > 1 means the current code is faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUITES = ("smoke", "arnab2018", "massena2025")
#: claim kind whose share the issue asks for (issue 15)
SOUNDNESS = "certificate_soundness"
#: the row for the suite's time outside every claim
OUTSIDE = "outside claims (set-up, summaries, report)"
#: folders the audit package reads beside itself (audit/resources.py)
RESOURCES = ("suites", "reports")


# -- the measured process ---------------------------------------------------------------------
def worker(suite: str, images: int, device: str, out: Path) -> None:
    """One audit of ``suite`` in this process; the measurements go to ``out`` as JSON.

    Only settings this checkout's :class:`Settings` knows are passed: an older one may lack
    some (``progress``), and its defaults are what it ran with.
    """
    start = time.perf_counter()
    # Imported here, from PYTHONPATH: the driver process never imports audit, whose copy
    # (old or new) only this process chooses.
    import torch

    import audit
    from audit.config import Settings
    from audit.session import run_audit

    imported = time.perf_counter() - start
    report_dir = Path.cwd() / "report"
    wanted: dict[str, Any] = {
        "model": "demo",
        "suites": (suite,),
        "limit": images,
        "report_dir": report_dir,
        "device": device,
        "progress": "off",
    }
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in wanted.items() if k in known})
    passes = count_passes()
    start = time.perf_counter()
    run_audit(settings)
    total = time.perf_counter() - start
    passes.remove()
    pass_costs = time_passes(images, device)
    record = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    claims = record.get("claims", [])
    if isinstance(claims, dict):
        claims = list(claims.values())
    result = {
        "audit_file": audit.__file__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "import_s": imported,
        "total_s": total,
        "suite_sha256": [s.get("sha256") for s in record.get("suites", [])],
        "images_forward": passes.forward,
        "images_backward": passes.backward,
        **pass_costs,
        "claims": [
            {
                "nodeid": c.get("nodeid"),
                "kind": c.get("kind", "?"),
                "duration_s": float(c.get("duration_s") or 0.0),
                "verdict": c.get("verdict"),
            }
            for c in claims
        ],
    }
    out.write_text(json.dumps(result), encoding="utf-8")


@dataclasses.dataclass
class PassCount:
    """Images through the audited model during the audit, forward and backward."""

    forward: int = 0
    backward: int = 0
    handle: Any = None

    def remove(self) -> None:
        self.handle.remove()


def count_passes() -> PassCount:
    """Count every image the audited model sees, whichever code path calls it: a global
    forward hook on the model wrapper (the class both old and new checkouts load the model
    into), and a gradient hook on its output for the backward passes."""
    import torch
    from torch.nn.modules.module import register_module_forward_hook

    count = PassCount()

    def backward(n: int) -> Any:
        def hook(grad: Any) -> None:
            count.backward += n

        return hook

    def forward(module: Any, args: Any, output: Any) -> None:
        if type(module).__name__ != "SegmentationWrapper" or not isinstance(output, torch.Tensor):
            return
        count.forward += int(output.shape[0])
        if output.requires_grad:
            output.register_hook(backward(int(output.shape[0])))

    count.handle = register_module_forward_hook(forward)
    return count


def time_passes(images: int, device: str, repeats: int = 5) -> dict[str, float]:
    """Seconds per image of the demo's forward pass, and of a forward and backward pass to the
    input, on the audit's own images (median of ``repeats``), in this process after the audit."""
    import torch

    from audit.data import open_dataset
    from audit.model import load_model
    from audit.resources import demo_model_file

    model = load_model(demo_model_file()).module.to(device)
    data = open_dataset(f"synthetic?n={images}")
    x = torch.stack([data[i].image for i in range(images)]).to(device)

    def median(fn: Any) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times) / images

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        inputs = x.clone().requires_grad_()
        torch.autograd.grad(model(inputs).sum(), inputs)

    return {"forward_s": median(forward), "forward_backward_s": median(forward_backward)}


def model_time(run: dict[str, Any]) -> float:
    """The audit's model time: its images forward at the forward cost, plus those also
    backward at the extra cost of a backward pass; no harness could run the same passes in
    less (the floor of the suite's time as its budgets stand)."""
    backward = run["forward_backward_s"] - run["forward_s"]
    return run["images_forward"] * run["forward_s"] + run["images_backward"] * backward


# -- the driver -------------------------------------------------------------------------------
@dataclasses.dataclass
class Side:
    name: str
    root: Path
    runs: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)


def check_checkout(root: Path) -> None:
    """Refuse a baseline folder the old package could not run from, before any run."""
    if not (root / "audit" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {root}: no audit/__init__.py there")
    missing = [
        name
        for name in RESOURCES
        if not (root / "audit" / name).is_dir() and not (root / name).is_dir()
    ]
    if missing:
        raise SystemExit(
            f"--baseline {root}: no {' or '.join(missing)} folder beside audit/, which the "
            f"old package reads its suites and report templates from; make it with\n"
            f"  git -C {REPO} archive <commit> audit suites reports | tar -x -C {root}"
        )


def run_once(side: Side, suite: str, images: int, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"segaudit-bench-suites-{side.name}-") as tmp:
        out = Path(tmp) / "measured.json"
        env = {**os.environ, "PYTHONPATH": str(side.root)}
        # -P: the script's folder (bench/) is not put on sys.path, only PYTHONPATH is.
        command = [sys.executable, "-P", str(Path(__file__).resolve()), "--worker", suite]
        command += ["--images", str(images), "--device", device, "--out", str(out)]
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise SystemExit(f"{suite} ({side.name}) failed with exit status {done.returncode}")
        result = json.loads(out.read_text(encoding="utf-8"))
    imported = Path(result["audit_file"]).resolve()
    if not imported.is_relative_to(side.root.resolve() / "audit"):
        raise SystemExit(
            f"{side.name} run imported audit from {imported}, not from {side.root}: the "
            "comparison would time the wrong code"
        )
    return result


def by_kind(run: dict[str, Any]) -> dict[str, float]:
    kinds: dict[str, float] = {}
    for claim in run["claims"]:
        kinds[claim["kind"]] = kinds.get(claim["kind"], 0.0) + claim["duration_s"]
    kinds[OUTSIDE] = run["total_s"] - sum(c["duration_s"] for c in run["claims"])
    return kinds


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per kind and of the total over the repeats."""
    per_run = [by_kind(run) for run in runs]
    kinds = {k for kinds in per_run for k in kinds}
    out = {k: statistics.median(kinds.get(k, 0.0) for kinds in per_run) for k in kinds}
    out["total"] = statistics.median(run["total_s"] for run in runs)
    return out


def verdicts(runs: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for claim in runs[-1]["claims"]:
        counts[str(claim["verdict"])] = counts.get(str(claim["verdict"]), 0) + 1
    return ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))


def print_suite(suite: str, sides: Sequence[Side], images: int) -> None:
    medians = [summary(side.runs[suite]) for side in sides]
    repeats = len(sides[0].runs[suite])
    print(f"\n{suite}: {images} images, median of {repeats} run(s) per side")
    kinds = sorted(
        {k for m in medians for k in m} - {"total", OUTSIDE},
        key=lambda k: -medians[-1].get(k, 0.0),
    )
    header = f"  {'claim kind':44s}" + "".join(f"{s.name + ' s':>12s}{'share':>8s}" for s in sides)
    if len(sides) == 2:
        header += f"{'old/new':>9s}"
    print(header)
    for kind in [*kinds, OUTSIDE, "total"]:
        line = f"  {kind:44s}"
        for m in medians:
            seconds = m.get(kind)
            line += (
                f"{seconds:12.2f}{seconds / m['total']:8.1%}" if seconds is not None else " " * 20
            )
        if len(sides) == 2 and kind in medians[0] and medians[1].get(kind):
            line += f"{medians[0][kind] / medians[1][kind]:9.2f}"
        print(line)
    for side, m in zip(sides, medians, strict=True):
        note = f"    {side.name}: claims {verdicts(side.runs[suite])}"
        if SOUNDNESS in m:
            note += f"; soundness share of the suite's time {m[SOUNDNESS] / m['total']:.1%}"
        print(note)
        runs = side.runs[suite]
        if all("images_forward" in run for run in runs):
            last, floor = runs[-1], statistics.median(model_time(run) for run in runs)
            print(
                f"    {side.name}: {last['images_forward']} images forward, "
                f"{last['images_backward']} backward; at {last['forward_s'] * 1e3:.1f} ms and "
                f"{last['forward_backward_s'] * 1e3:.1f} ms per image (forward; forward and "
                f"backward) that is {floor:.2f} s of model time, {floor / m['total']:.1%} "
                "of the suite"
            )
    if len(sides) == 2:
        hashes = [side.runs[suite][-1]["suite_sha256"] for side in sides]
        same = "the same suite file" if hashes[0] == hashes[1] else "suite files that differ"
        print(
            f"    {suite} old/new = {medians[0]['total'] / medians[1]['total']:.2f} "
            f"(each side ran {same})"
        )


def parse_suites(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected suite names separated by commas, got {text!r}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suites", type=parse_suites, default=SUITES)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args.worker, args.images, args.device, args.out)
        return
    sides = [Side("new", REPO)]
    if args.baseline is not None:
        check_checkout(args.baseline.resolve())
        sides.insert(0, Side("old", args.baseline.resolve()))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, device {args.device}, demo model, "
        f"{args.images} synthetic images, suites {', '.join(args.suites)}"
    )
    for repeat in range(args.repeats):
        for suite in args.suites:
            # Alternating order: a load that rises during a pair does not favour one side.
            order = sides if repeat % 2 == 0 else sides[::-1]
            for side in order:
                run = run_once(side, suite, args.images, args.device)
                if not side.runs:
                    print(
                        f"  {side.name}: audit from {run['audit_file']} (torch {run['torch']}, "
                        f"{run['threads']} threads)"
                    )
                side.runs.setdefault(suite, []).append(run)
                print(
                    f"  run {repeat + 1}/{args.repeats} {suite:12s} {side.name:3s} "
                    f"{run['total_s']:9.2f} s (imports {run['import_s']:.1f} s, not counted)",
                    flush=True,
                )
    for suite in args.suites:
        print_suite(suite, sides, args.images)


if __name__ == "__main__":
    main()

"""Scaling an audit out: one process against torchrun ranks, images loaded by worker
processes, and a plan for the full Cityscapes val audit on 8 GPUs.

    python bench/scale.py                                  # CPU: 1 process vs 2 gloo ranks
    python bench/scale.py --device cuda --ranks 2 --size 512x1024 --images 32   # GPUs
    python bench/scale.py --skip scale,loader              # only the plan

1. **scale**: the same audit (clean, an FGSM sweep, PGD, Lipschitz certificates, a soundness
   check: every sharded evaluation kind but smoothing) on ``--images`` synthetic images, by
   ``pytest --audit`` in one process and by ``torchrun --nproc-per-node N``, interleaved and
   repeated; the time is the record's own ``duration_s`` (model load to record written,
   without Python's start-up or the rendezvous).  Prints images per second, the speed-up
   and the scaling efficiency (speed-up / ranks); both records are compared as well.
2. **loader**: the clean evaluation over PNG files (decoded per image, as a real dataset is)
   with the images loaded in the audit's process and by ``--loader-workers`` processes.
3. **plan**: ``arnab2018`` + ``massena2025`` on ``--plan-images`` demo images in one batch,
   counting every image that goes through the model, forward only or forward and backward,
   per claim kind; times the per-image costs of a Cityscapes model (``--forward-ms``,
   ``--backward-ms``: by default DeepLabV3-ResNet50 on an H100 from bench/attacks.py, scaled
   from 512x1024 to 1024x2048 by pixels) gives the hours of the full val audit (500 images)
   on ``--gpus`` GPUs at the measured scaling efficiency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from compare_records import differences, normalise  # noqa: E402

SUITE = """
name = "scale"

[[claims]]
id = "clean"
kind = "clean"
metric = "miou"
min = 0.0

[[claims]]
id = "fgsm"
kind = "attack"
attack = "fgsm"
norm = "linf"
eps = ["1/255", "2/255", "4/255", "8/255"]
metric = "iou_ratio"
min = 0.0

[[claims]]
id = "pgd"
kind = "attack"
attack = "pgd"
norm = "linf"
eps = "4/255"
steps = 10
metric = "miou"
min = 0.0

[[claims]]
id = "certified"
kind = "certified"
certifier = "lipschitz"
norm = "l2"
eps = [0.05, 0.1]
metric = "certified_pixel_accuracy"
min = 0.0

[[claims]]
id = "sound"
kind = "certificate_soundness"
certifier = "lipschitz"
norm = "l2"
eps = 0.1
attacks = ["pgd"]
steps = 10
"""

#: DeepLabV3-ResNet50 on an NVIDIA H100 (bench/README.md, bench/attacks.py): 16 images at
#: 512x1024 in 3.406 s for 2 forward and 10 forward+backward passes each; a backward pass
#: taken as twice a forward one, per image: forward 3.406 / (16 * 32) s, then x4 for
#: 1024x2048
FORWARD_MS = 3.406 / (16 * 32) * 1e3 * 4
BACKWARD_MS = 2 * FORWARD_MS
CITYSCAPES_VAL = 500


def _run(folder: Path, args: argparse.Namespace, ranks: int) -> dict[str, Any]:
    report = folder / f"report-{ranks}"
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command = [
        sys.executable, *(launcher if ranks > 1 else []), "-m", "pytest", "-p",
        "no:cacheprovider", "-q", "--audit", "--audit-suite", "scale.toml", "--audit-data",
        f"synthetic?n={args.images}&size={args.size}", "--audit-batch-size", str(args.batch),
        "--audit-device", args.device, "--audit-report", str(report), "--audit-progress", "off",
    ]  # fmt: skip
    env = dict(os.environ)
    # each rank gets its share of the cores, as torchrun gives it; one process gets them all
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"audit with {ranks} rank(s) failed:\n{done.stdout[-3000:]}")
    return json.loads((report / "results.json").read_text())


def scale(args: argparse.Namespace) -> float:
    folder = Path(tempfile.mkdtemp(prefix="segaudit-scale-"))
    (folder / "scale.toml").write_text(SUITE)
    (folder / "pytest.ini").write_text("[pytest]\n")
    times: dict[int, list[float]] = {1: [], args.ranks: []}
    records: dict[int, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for ranks in times:
            records[ranks] = _run(folder, args, ranks)
            times[ranks].append(records[ranks]["provenance"]["duration_s"])
    one, many = (statistics.median(times[r]) for r in times)
    speedup = one / many
    efficiency = speedup / args.ranks
    print(f"\n## scale: {args.images} images {args.size}, batch {args.batch}, {args.device}")
    print("| processes | audit time (median) | images/s |")
    print("|---|---|---|")
    for ranks, seconds in ((1, one), (args.ranks, many)):
        print(f"| {ranks} | {seconds:.2f} s | {args.images / seconds:.2f} |")
    print(f"speed-up {speedup:.2f}, scaling efficiency {efficiency:.2f} ({args.ranks} ranks)")
    launch = {"distributed", "torch_threads"}

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in launch}
        return [strip(v) for v in value] if isinstance(value, list) else value

    found = list(differences(normalise(strip(records[1])), normalise(strip(records[args.ranks]))))
    print(f"records of 1 process and {args.ranks} ranks: {len(found)} difference(s)")
    return efficiency


def _png_folder(root: Path, images: int, size: str) -> str:
    from audit.data import open_dataset

    data = open_dataset(f"synthetic?n={images}&size={size}")
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(images):
        sample = data[i]
        rgb = (sample.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(sample.mask.numpy().astype(np.uint8)).save(root / "masks" / f"{i:04d}.png")
    (root / "classes.txt").write_text("\n".join(data.class_names) + "\n")
    return f"folder:{root}"


def loader(args: argparse.Namespace) -> None:
    from audit.data import open_dataset
    from audit.engine import Engine
    from audit.evaluations import evaluate_clean
    from audit.model import load_model
    from audit.resources import demo_model_file

    spec = _png_folder(Path(tempfile.mkdtemp(prefix="segaudit-png-")), args.images, args.size)
    model = load_model(demo_model_file())
    times: dict[int, list[float]] = {0: [], args.loader_workers: []}
    results = {}
    for _ in range(args.repeats):
        for workers in times:
            engine = Engine(
                model, open_dataset(spec), device=args.device, batch_size=args.batch,
                loader_workers=workers,
            )  # fmt: skip
            start = time.perf_counter()
            results[workers] = evaluate_clean(engine).per_image
            times[workers].append(time.perf_counter() - start)
    assert torch.equal(results[0], results[args.loader_workers])
    inline, workers = (statistics.median(times[w]) for w in times)
    print(f"\n## loader: clean evaluation of {args.images} PNG images {args.size}, {args.device}")
    print("| loading | time (median) | images/s |")
    print("|---|---|---|")
    print(f"| in the audit's process | {inline:.2f} s | {args.images / inline:.2f} |")
    print(
        f"| {args.loader_workers} worker processes | {workers:.2f} s | "
        f"{args.images / workers:.2f} |"
    )
    print(f"workers / in-process time: {workers / inline:.2f} (same results: yes)")


@contextlib.contextmanager
def counting_images(counts: Counter[tuple[str, str]]) -> Iterator[None]:
    """Count every image through the audited model, per claim kind and pass kind."""
    import audit.engine

    original = audit.engine.Engine.__init__

    def init(self: Any, *a: Any, **k: Any) -> None:
        original(self, *a, **k)

        def hook(module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            kind = (self.claim or "report").split("::")[-1].split("[")[0]
            passes = "forward+backward" if x.requires_grad else "forward"
            counts[(kind, passes)] += int(x.shape[0])

        self.module.register_forward_pre_hook(hook)

    audit.engine.Engine.__init__ = init
    try:
        yield
    finally:
        audit.engine.Engine.__init__ = original


def plan(args: argparse.Namespace, efficiency: float) -> None:
    from audit.config import Settings
    from audit.session import run_audit

    counts: Counter[tuple[str, str]] = Counter()
    report = Path(tempfile.mkdtemp(prefix="segaudit-plan-"))
    settings = Settings(
        model="demo", suites=("arnab2018", "massena2025"), report_dir=report,
        device="cpu", limit=args.plan_images, batch_size=args.plan_images, progress="off",
        data=f"synthetic?n={args.plan_images}&size={args.plan_size}",
    )  # fmt: skip
    start = time.perf_counter()
    with counting_images(counts):
        run_audit(settings)
    seconds = time.perf_counter() - start
    claims = sorted({k for k, _ in counts})
    n, fwd_ms, bwd_ms = args.plan_images, args.forward_ms, args.backward_ms
    print(f"\n## plan: arnab2018 + massena2025, counted on {n} demo images ({seconds:.0f} s)")
    print(f"per-image cost: forward {fwd_ms:.1f} ms, backward {bwd_ms:.1f} ms (1024x2048)")
    print("| claim | forward / image | forward+backward / image | GPU-hours for 500 images |")
    print("|---|---|---|---|")
    total = 0.0
    for claim in claims:
        f = counts[(claim, "forward")] / n
        fb = counts[(claim, "forward+backward")] / n
        hours = CITYSCAPES_VAL * (f * fwd_ms + fb * (fwd_ms + bwd_ms)) / 1e3 / 3600
        total += hours
        print(f"| {claim} | {f:.0f} | {fb:.0f} | {hours:.2f} |")
    wall = total / args.gpus / efficiency
    print(
        f"total {total:.1f} GPU-hours; on {args.gpus} GPUs at scaling efficiency "
        f"{efficiency:.2f}: {wall:.1f} hours"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--plan-images", type=int, default=2)
    parser.add_argument("--plan-size", default="64x128")
    parser.add_argument("--forward-ms", type=float, default=FORWARD_MS)
    parser.add_argument("--backward-ms", type=float, default=BACKWARD_MS)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--efficiency", type=float, help="for the plan, instead of measuring")
    parser.add_argument("--skip", default="", help="comma-separated: scale, loader, plan")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, device {args.device}")
    efficiency = args.efficiency
    if "scale" not in skip:
        measured = scale(args)
        efficiency = efficiency or measured
    if "loader" not in skip:
        loader(args)
    if "plan" not in skip:
        plan(args, efficiency or 0.9)


if __name__ == "__main__":
    main()

"""PGD through the harness against a bare PyTorch loop and against torchattacks, in one run.

    python bench/attacks.py [--model lraspp|deeplabv3] [--size 512x1024] [--images 8]
                            [--batch-size 4] [--steps 10] [--repeats 5] [--device auto]

A torchvision segmentation network with random weights (no download) attacks in-memory
images.  Three ways of computing "mIoU under PGD-Linf 4/255, k steps" do the same work:

- harness: ``Engine.attack("pgd", ...)``, which per batch runs one clean forward pass, k
  forward+backward passes, one adversarial forward pass, confusion matrices, the worst
  examples, gradient checks and the model guard;
- bare: a plain loop with exactly the same forward and backward passes (checked) and the
  same projection and confusion matrices, nothing else;
- torchattacks: ``torchattacks.PGD`` with the same eps, step size, steps and random start,
  plus the same clean and adversarial forward passes and confusion matrices.
  torchattacks crashes on the ignore label, so it sees ignored pixels labelled 0.

- sea: ``Engine.attack("sea", iterations=k)``, the ensemble of four APGD runs (one per loss),
  each image keeping its worst, through the harness: its forward/backward counts and its time
  relative to the harness's PGD (what a release gate costs over a quick check).

Runs are interleaved and repeated; the median of each is compared, so that a noisy machine
affects all alike.  Goals (issue 3): harness / bare <= 1.05, harness / torchattacks
<= 1.0.  Peak device memory is printed for CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from audit import metrics
from audit.data.base import Sample, SegmentationDataset
from audit.devices import resolve_device
from audit.engine import Engine
from audit.evaluations import evaluate_attack
from audit.metrics import predict
from audit.model.loading import LoadedModel
from audit.model.metadata import ModelMetadata
from audit.model.wrapper import SegmentationWrapper
from audit.threat import ThreatModel, parse_epsilon

NUM_CLASSES = 19
IGNORE = 255


class InMemory(SegmentationDataset):
    """Random images and blocky masks with ignored pixels, generated once."""

    kind = "bench"
    ignore_index = IGNORE

    def __init__(self, n: int, size: tuple[int, int], seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        h, w = size
        self.class_names = tuple(f"c{k}" for k in range(NUM_CLASSES))
        self.palette = tuple((k * 13 % 256, k * 57 % 256, k * 101 % 256) for k in range(19))
        self.images = torch.rand(n, 3, h, w, generator=g)
        coarse = torch.randint(0, NUM_CLASSES, (n, 1, h // 32, w // 32), generator=g)
        masks = F.interpolate(coarse.float(), size=(h, w), mode="nearest").long()[:, 0]
        masks[:, : h // 16] = IGNORE  # a band of ignored pixels, as in Cityscapes
        self.masks = masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.images[index], self.masks[index], f"bench-{index:03d}")

    def fingerprint(self) -> str:
        return f"bench-{tuple(self.images.shape)}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_samples": len(self)}


def build_model(name: str) -> torch.nn.Module:
    from torchvision.models import segmentation as seg

    if name == "lraspp":
        net = seg.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES
        )
    else:
        net = seg.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
        )
    return net.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def confusion(pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return metrics.per_image_confusion(pred, masks, NUM_CLASSES, IGNORE).cpu()


def batches(data: InMemory, batch_size: int, device: torch.device):
    for start in range(0, len(data), batch_size):
        yield (
            data.images[start : start + batch_size].to(device),
            data.masks[start : start + batch_size].to(device),
        )


def run_harness(loaded, data, args, device, threat) -> tuple[float, int, int]:
    engine = Engine(loaded, data, device=device, batch_size=args.batch_size, seed=0)
    result = evaluate_attack(engine, "pgd", {"steps": args.steps}, threat)
    return (
        float(metrics.miou(result.per_image.sum(0))),
        result.forward_passes,
        result.backward_passes,
    )


def run_sea(loaded, data, args, device, threat) -> tuple[float, int, int]:
    engine = Engine(loaded, data, device=device, batch_size=args.batch_size, seed=0)
    result = evaluate_attack(engine, "sea", {"iterations": args.steps}, threat)
    return (
        float(metrics.miou(result.per_image.sum(0))),
        result.forward_passes,
        result.backward_passes,
    )


def run_bare(model, data, args, device, threat) -> tuple[float, int, int]:
    eps, steps = threat.eps.value, args.steps
    alpha = 2.5 * eps / steps
    gen = torch.Generator(device=device).manual_seed(0)
    total = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    forwards = backwards = 0
    for images, masks in batches(data, args.batch_size, device):
        with torch.no_grad():
            clean = predict(model(images))
        forwards += 1
        noise = torch.rand(images.shape, generator=gen, device=device) * 2 - 1
        adv = (images + eps * noise).clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), masks, ignore_index=IGNORE)
            (grad,) = torch.autograd.grad(loss, adv)
            forwards += 1
            backwards += 1
            adv = adv.detach() + alpha * grad.sign()
            adv = (images + (adv - images).clamp(-eps, eps)).clamp(0, 1)
        with torch.no_grad():
            pred = predict(model(adv))
        forwards += 1
        total += confusion(pred, masks).sum(0)
        del clean
    return float(metrics.miou(total)), forwards, backwards


def run_torchattacks(model, data, args, device, threat) -> tuple[float, int, int]:
    import torchattacks

    eps, steps = threat.eps.value, args.steps
    attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    total = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    forwards = backwards = 0
    for images, masks in batches(data, args.batch_size, device):
        with torch.no_grad():
            predict(model(images))
        adv = attack(images, torch.where(masks == IGNORE, 0, masks))
        with torch.no_grad():
            pred = predict(model(adv))
        forwards += 2 + steps
        backwards += steps
        total += confusion(pred, masks).sum(0)
    return float(metrics.miou(total)), forwards, backwards


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any, int]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return seconds, out, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("lraspp", "deeplabv3"), default="lraspp")
    parser.add_argument("--size", default=None, help="HxW (default 512x1024 GPU, 128x256 CPU)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--profile", action="store_true", help="also print where one harness run spends time"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    size = tuple(int(v) for v in (args.size or ("512x1024" if gpu else "128x256")).split("x"))
    args.images = args.images or (8 if gpu else 4)
    args.batch_size = args.batch_size or (4 if gpu else 2)
    torch.manual_seed(0)
    if gpu:
        torch.backends.cudnn.benchmark = True
    net = build_model(args.model)
    wrapper = SegmentationWrapper(net, ModelMetadata(num_classes=NUM_CLASSES), name=args.model)
    loaded = LoadedModel(
        module=wrapper,
        path=None,
        sha256=f"bench-{args.model}",
        format="module",
        metadata=wrapper.metadata,
    )
    model = wrapper.to(device)
    data = InMemory(args.images, size)  # type: ignore[arg-type]
    threat = ThreatModel("linf", parse_epsilon("4/255"))
    runners = {
        "harness": lambda: run_harness(loaded, data, args, device, threat),
        "bare": lambda: run_bare(model, data, args, device, threat),
        "torchattacks": lambda: run_torchattacks(model, data, args, device, threat),
        "sea": lambda: run_sea(loaded, data, args, device, threat),
    }
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'}), "
        f"torch {torch.__version__}, model {args.model} (random weights), "
        f"{args.images} images {size[0]}x{size[1]}, batch {args.batch_size}, "
        f"PGD-Linf 4/255 {args.steps} steps, {args.repeats} repeats (median)"
    )
    for fn in runners.values():  # warm-up: cudnn autotuning, lazy initialisation
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    peaks: dict[str, int] = dict.fromkeys(runners, 0)
    outputs: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            seconds, out, peak = timed(fn, device)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            outputs[name] = out
    # The ensemble does more work by design; the three PGD runs must do the same.
    counts = {name: out[1:] for name, out in outputs.items() if name != "sea"}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"forward/backward counts differ, the comparison is unfair: {counts}")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name in runners:
        peak = f", peak {peaks[name] / 2**20:.0f} MiB" if gpu else ""
        print(
            f"  {name:13s} {median[name]:8.3f} s  mIoU {outputs[name][0]:.4f}  "
            f"forward {outputs[name][1]}, backward {outputs[name][2]}{peak}"
        )
    if args.profile:
        import cProfile
        import pstats

        for name in ("harness", "bare"):
            profiler = cProfile.Profile()
            profiler.runcall(lambda name=name: (runners[name](), sync(device)))
            print(f"--- profile: {name}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    print(f"harness / bare loop    = {median['harness'] / median['bare']:.3f}  (goal <= 1.05)")
    print(
        f"harness / torchattacks = {median['harness'] / median['torchattacks']:.3f}  (goal <= 1.0)"
    )
    sea, pgd = outputs["sea"], outputs["harness"]
    print(
        f"sea / pgd (harness)    = {median['sea'] / median['harness']:.2f}x time, "
        f"{sea[1] / pgd[1]:.2f}x forward, {sea[2] / pgd[2]:.2f}x backward passes "
        f"(4 members x {args.steps} iterations; mIoU {sea[0]:.4f} vs {pgd[0]:.4f})"
    )


if __name__ == "__main__":
    main()

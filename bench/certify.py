"""Lipschitz certification against randomized smoothing and plain inference, in one run.

    python bench/certify.py [--images 16] [--size 128x256] [--batch-size 8] [--n 100]
                            [--n0 10] [--sigma 0.25] [--repeats 3] [--device auto]

On the bundled 1-Lipschitz demo network and the same synthetic images:

- plain inference: forward pass and argmax;
- Lipschitz certificates (Massena et al.): one forward pass, top-2 margins in float64,
  per-pixel radii and the joint-budget certified pixel accuracy over a 26-radius grid (one
  sort per image), i.e. what a certificate costs;
- the harness's whole Lipschitz certification (``certify_lipschitz``), which adds the
  worst-case IoU profile per class at the claimed radii;
- randomized smoothing (SegCertify) at n0 + n noisy samples per image, Holm correction.

Times are synchronised device time per image (median of the repeats, runs interleaved);
forward passes are counted.  Goals (issue 4): certificates <= 1.1x plain inference, and
>= 100x faster than smoothing at n = 100.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from audit.certify import joint, margins
from audit.certify.smoothing import SmoothingConfig, smoothing_certify
from audit.data.synthetic import SyntheticStreetScenes
from audit.devices import resolve_device
from audit.engine import Engine
from audit.evaluations.certified import certify_lipschitz
from audit.evaluations.lipschitz import KAPPA
from audit.model import load_model
from audit.resources import demo_model_file

RADII = tuple(round(0.02 * i, 2) for i in range(26))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n0", type=int, default=10)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--tau", type=float, default=0.75)
    parser.add_argument("--alpha", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    loaded = load_model(demo_model_file())
    model = loaded.module.to(device)
    data = SyntheticStreetScenes(num_samples=args.images, size=(h, w))
    images = torch.stack([data[i].image for i in range(args.images)]).to(device)
    masks = torch.stack([data[i].mask for i in range(args.images)]).to(device)
    lipschitz = float(loaded.metadata.lipschitz or 1.0)
    eps = torch.tensor(RADII, dtype=torch.float64, device=device)
    config = SmoothingConfig(
        sigma=args.sigma,
        n=args.n,
        n0=args.n0,
        tau=args.tau,
        alpha=args.alpha,
        batch=args.batch_size,
    )
    config.validate(h * w)
    passes = {"plain": 0, "lipschitz": 0, "harness": 0, "smoothing": 0}

    def batches():
        for start in range(0, args.images, args.batch_size):
            yield images[start : start + args.batch_size], masks[start : start + args.batch_size]

    def plain() -> None:
        with torch.no_grad():
            for x, _ in batches():
                model(x).argmax(1)
                passes["plain"] += 1

    def lipschitz_certificates() -> None:
        with torch.no_grad(), margins.full_float32():
            for x, y in batches():
                logits = model(x)
                passes["lipschitz"] += 1
                margins.certified_radius(logits, lipschitz, kappa=KAPPA)
                joint.certified_pixel_accuracy_counts(
                    logits, y, lipschitz, eps, ignore_index=255, kappa=KAPPA
                )

    def harness() -> None:
        engine = Engine(loaded, data, device=device, batch_size=args.batch_size)
        result = certify_lipschitz(engine, lipschitz, [0.1, 0.17])
        passes["harness"] += result.forward_passes

    def smoothing() -> None:
        generator = torch.Generator(device=device).manual_seed(0)

        def counted(x: torch.Tensor) -> torch.Tensor:
            passes["smoothing"] += 1
            return model(x)

        for x, _ in batches():
            smoothing_certify(counted, x, config, generator=generator, num_classes=8)

    runners: dict[str, Callable[[], None]] = {
        "plain": plain,
        "lipschitz": lipschitz_certificates,
        "harness": harness,
        "smoothing": smoothing,
    }
    print(
        f"device {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, demo model (1-Lipschitz, L = {lipschitz:.4f}), "
        f"{args.images} images {h}x{w}, batch {args.batch_size}; smoothing sigma {args.sigma}, "
        f"n {args.n}, n0 {args.n0}, tau {args.tau}, alpha {args.alpha} (radius "
        f"{config.radius:.4f}); {args.repeats} repeats (median)"
    )
    for fn in runners.values():
        fn()
    passes.update(dict.fromkeys(passes, 0))
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    per_image: dict[str, Any] = {k: statistics.median(v) / args.images for k, v in times.items()}
    for name in runners:
        print(
            f"  {name:10s} {per_image[name] * 1e3:9.2f} ms/image  "
            f"forward passes per image {passes[name] / args.repeats / args.images:7.2f}"
        )
    print(
        f"lipschitz certificates / plain inference = "
        f"{per_image['lipschitz'] / per_image['plain']:.3f}  (goal <= 1.1)"
    )
    print(
        f"harness certification / plain inference  = "
        f"{per_image['harness'] / per_image['plain']:.3f}  (adds the worst-case IoU profile)"
    )
    print(
        f"smoothing / lipschitz certificates       = "
        f"{per_image['smoothing'] / per_image['lipschitz']:.1f}x  (goal >= 100)"
    )


if __name__ == "__main__":
    main()

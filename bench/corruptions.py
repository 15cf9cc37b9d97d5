"""Throughput of the torch corruptions against the reference (imagecorruptions), one run.

    python bench/corruptions.py [--images 8] [--size 256x512] [--glass-images 1]
                                [--repeats 3] [--device cpu]

The same synthetic street scenes (``audit.data.synthetic``) go through every corruption at
severity 3: the torch version as one batch on ``--device`` (synchronised), the reference
image by image on uint8 arrays, as it works.  Figures are images per second, median of
``--repeats`` interleaved runs, and their ratio.  The reference's glass blur visits every
pixel in Python (about a minute per image at 256 x 512), so it runs on ``--glass-images``
images only.  Needs the ``reference`` extra.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from audit.corruptions import CORRUPTIONS, corrupt
from audit.corruptions import reference as ref
from audit.data.synthetic import render_street_scene


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--glass-images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    scenes = [render_street_scene(0, i, (h, w))[0] for i in range(args.images)]
    uint8 = [np.round(np.clip(s, 0, 1) * 255).astype(np.uint8) for s in scenes]
    batch = torch.stack([torch.from_numpy(u).permute(2, 0, 1) for u in uint8]).float() / 255
    batch = batch.to(device)
    ref.load()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"{args.images} images {h}x{w}, severity {args.severity}, median of {args.repeats}"
    )
    print("| corruption | torch img/s | reference img/s | torch / reference |")
    print("|---|---|---|---|")
    for name, corruption in CORRUPTIONS.items():
        n_ref = args.glass_images if name == "glass_blur" else args.images
        ours, theirs = [], []
        for _ in range(args.repeats):
            _sync(device)
            start = time.perf_counter()
            corrupt(name, batch, args.severity, seeds=list(range(args.images)))
            _sync(device)
            ours.append(args.images / (time.perf_counter() - start))
            if not corruption.reference:
                continue
            start = time.perf_counter()
            for i, image in enumerate(uint8[:n_ref]):
                ref.reference_corrupt(name, image, args.severity, seed=i)
            theirs.append(n_ref / (time.perf_counter() - start))
            if name == "glass_blur":
                break  # one slow reference run is enough to read its rate
        a = statistics.median(ours)
        if theirs:
            b = statistics.median(theirs)
            note = f" ({n_ref} image{'s' * (n_ref > 1)})" if n_ref != args.images else ""
            print(f"| {name} | {a:.1f} | {b:.2f}{note} | {a / b:.1f}x |")
        else:
            print(f"| {name} | {a:.1f} | (not in imagecorruptions) | |")


if __name__ == "__main__":
    main()

"""An attack sweep against one epsilon: FGSM over Arnab et al.'s 8-epsilon grid, and at one.

    python bench/grid.py --images 8 --repeats 5

On the demo model and the same synthetic images, each on a fresh engine, interleaved and
repeated (median):

- **one epsilon**: FGSM at 4/255 and its noise baseline (the record computes one per attack
  entry): the cost of a claim at one epsilon;
- **grid**: FGSM over {0.25, ..., 32}/255, the way a sweep claim asks (one gradient serves
  every epsilon) and the noise baselines of all 8 (one pass and one draw for the grid);
- the same two without the noise baselines.

Prints times, forward passes per image and the ratios grid / one epsilon (issue 15's goal:
<= 2).  Each epsilon needs its own forward pass of the attacked images (8 against 1), so
the ratio of passes has a floor that no sharing removes: with F the cost of a forward pass
and B of a backward one, (F + (F + B) + 8F) / (F + (F + B) + F).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from audit.data import open_dataset
from audit.engine import Engine
from audit.evaluations import evaluate_attack, evaluate_noise
from audit.model import load_model
from audit.resources import demo_model_file
from audit.threat import ThreatModel, parse_epsilon

GRID = ("0.25/255", "0.5/255", "1/255", "2/255", "4/255", "8/255", "16/255", "32/255")
ONE = "4/255"


def run(model, data, threats: list[ThreatModel], noise: bool, batch: int) -> tuple[float, int]:
    engine = Engine(model, data, batch_size=batch)
    start = time.perf_counter()
    for threat in threats:
        evaluate_attack(engine, "fgsm", {}, threat, sweep=threats)
        if noise:
            evaluate_noise(engine, threat, sweep=threats)
    return time.perf_counter() - start, engine.forward_passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(demo_model_file())
    spec = f"synthetic?n={args.images}&size={args.size}"
    grid = [ThreatModel("linf", parse_epsilon(e)) for e in GRID]
    one = [ThreatModel("linf", parse_epsilon(ONE))]
    cases = {
        "one epsilon + noise": (one, True),
        "grid + noise": (grid, True),
        "one epsilon": (one, False),
        "grid": (grid, False),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    passes: dict[str, int] = {}
    # every case renders the same scenes per batch (a synthetic dataset draws on access)
    data = open_dataset(spec)
    for threats, noise in cases.values():  # untimed warm-up
        run(model, data, threats, noise, args.images)
    for _ in range(args.repeats):
        for name, (threats, noise) in cases.items():
            seconds, passes[name] = run(model, data, threats, noise, args.images)
            times[name].append(seconds)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"FGSM, demo model, {args.images} images {args.size}, one batch, CPU")
    print("| case | time (median) | forward passes per batch |")
    print("|---|---|---|")
    for name in cases:
        print(f"| {name} | {median[name]:.3f} s | {passes[name]} |")
    with_noise = median["grid + noise"] / median["one epsilon + noise"]
    bare = median["grid"] / median["one epsilon"]
    print(f"grid / one epsilon, with noise baselines: {with_noise:.2f} (goal <= 2)")
    print(f"grid / one epsilon, attack only: {bare:.2f}")


if __name__ == "__main__":
    main()

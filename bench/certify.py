"""Lipschitz certification against randomized smoothing and plain inference, in one run.

    python bench/certify.py [--images 16] [--size 128x256] [--batch-size 8] [--n 100]
                            [--n0 10] [--sigma 0.25] [--repeats 3] [--device auto]

On the bundled 1-Lipschitz demo network and the same synthetic images (rendered once,
before any timing, so that no competitor pays for drawing scenes):

- plain inference: forward pass and prediction (`audit.metrics.predict`);
- Lipschitz certificates (Massena et al.): one forward pass, top-2 margins in float64,
  per-pixel radii and the joint-budget certified pixel accuracy over a 26-radius grid, i.e.
  what a certificate costs;
- the Lipschitz bound from the weights, which a plugin run computes once per audit;
- the harness's Lipschitz certification (``certify_lipschitz``) at the radii of
  ``massena2025``'s certified claims, on a fresh engine, two ways: with L from the weights
  (``lipschitz = "auto"``, what plugin runs of the demo do; the bound included), and with
  L claimed as a number, which runs the falsification search first (only a suite or model
  that claims a constant pays for it);
- the whole certified claim: every item (all radii, both metrics) of ``massena2025``'s
  ``certified`` claims through the claim kind's ``measure``, as the plugin calls it, on a
  fresh engine whose bound is already computed (in ``massena2025`` the ``lipschitz-bound``
  claim runs first and computes it);
- randomized smoothing (SegCertify) at n0 + n noisy samples per image, Holm correction.

Times are synchronised device time per image (median of the repeats, runs interleaved).
Forward passes per image are images that went through the audited module (a forward
pre-hook sums the batch sizes) divided by the images certified.  Goals (issues 4 and 15):
certificates <= 1.1x plain inference, smoothing >= 100x the certificates at n = 100, and
the whole certified claim <= 1.5x plain inference.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from audit.certify import joint, margins
from audit.certify.smoothing import SmoothingConfig, smoothing_certify
from audit.claims import ClaimSpec, get_kind
from audit.claims.parsing import threat_of
from audit.data.base import Sample
from audit.data.synthetic import SyntheticStreetScenes
from audit.devices import resolve_device
from audit.engine import Engine
from audit.evaluations.certified import certify_lipschitz
from audit.evaluations.lipschitz import KAPPA, computed_bound
from audit.metrics import predict
from audit.model import load_model
from audit.model.loading import LoadedModel
from audit.model.wrapper import SegmentationWrapper
from audit.nets import LipschitzSegNet
from audit.resources import demo_model_file
from audit.suite import load_suite

RADII = tuple(round(0.02 * i, 2) for i in range(26))
SUITE = "massena2025"


class RenderedScenes(SyntheticStreetScenes):
    """Synthetic scenes drawn once: rendering costs more than the demo's forward pass, and
    plain inference is timed on tensors already in memory."""

    def __init__(self, num_samples: int, size: tuple[int, int]) -> None:
        super().__init__(num_samples, size=size)
        self._samples = [SyntheticStreetScenes.__getitem__(self, i) for i in range(num_samples)]

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index]


@dataclass(frozen=True)
class Runner:
    label: str
    #: the timed work, given what ``setup`` returned
    run: Callable[[Any], None]
    #: untimed preparation before each timed call (a fresh engine, a primed bound)
    setup: Callable[[], Any] = lambda: None


class ImageCounter:
    """Images through the audited module, per runner: a forward pre-hook on the module
    counts every call, including the float64 copy the falsification search makes of it
    (``deepcopy`` keeps the hook), whatever code path makes the call."""

    def __init__(self, module: torch.nn.Module, names: list[str]) -> None:
        self.images = dict.fromkeys(names, 0)
        self.current: str | None = None

        # A function, not a bound method: deepcopy would copy the method's counter along.
        def count(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if self.current is not None and args and isinstance(args[0], torch.Tensor):
                self.images[self.current] += int(args[0].shape[0])

        module.register_forward_pre_hook(count)

    def reset(self) -> None:
        self.images = dict.fromkeys(self.images, 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def certified_items() -> list[ClaimSpec]:
    """The items of the suite's ``certified`` claims, as the plugin collects them."""
    return [spec for spec in load_suite(SUITE).claims if spec.kind == "certified"]


def measure_items(engine: Engine, items: list[ClaimSpec]) -> None:
    for spec in items:
        kind = get_kind(spec.kind)
        kind.check_classes(spec, engine.class_names)
        with engine.measuring(spec.nodeid):
            kind.measure(spec, engine)


def wide_model() -> LoadedModel:
    """The demo's architecture at half its downsampling and twice its width (about 16 times
    its forward cost, nearer a real segmentation network), random 1-Lipschitz weights: the
    certificates' per-pixel work is the same, the forward pass weighs more against it."""
    torch.manual_seed(0)
    net = LipschitzSegNet(8, width=128, depth=6, factor=2).export()
    demo = load_model(demo_model_file()).metadata
    metadata = dataclasses.replace(demo, name="bench-wide", lipschitz=None, lipschitz_source=None)
    wrapper = SegmentationWrapper(net, metadata, name="bench-wide")
    return LoadedModel(wrapper, None, "bench-wide", "module", metadata)


def parse_args() -> argparse.Namespace:
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
    parser.add_argument(
        "--net",
        choices=("demo", "wide"),
        default="demo",
        help="the bundled demo, or a 1-Lipschitz net of the same family with about 16 times "
        "its forward cost (random weights)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    loaded = load_model(demo_model_file()) if args.net == "demo" else wide_model()
    model = loaded.module.to(device)
    data = RenderedScenes(args.images, (h, w))
    images = torch.stack([data[i].image for i in range(args.images)]).to(device)
    masks = torch.stack([data[i].mask for i in range(args.images)]).to(device)
    claimed = float(loaded.metadata.lipschitz or 1.0)
    eps = torch.tensor(RADII, dtype=torch.float64, device=device)
    items = certified_items()
    radii = sorted({threat_of(spec.params).eps.value for spec in items})
    config = SmoothingConfig(
        sigma=args.sigma,
        n=args.n,
        n0=args.n0,
        tau=args.tau,
        alpha=args.alpha,
        batch=args.batch_size,
    )
    config.validate(h * w)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, args.images, args.batch_size):
            yield images[start : start + args.batch_size], masks[start : start + args.batch_size]

    def fresh_engine() -> Engine:
        # The engine caches bounds and certifications: a fresh one per call, as per audit.
        return Engine(loaded, data, device=device, batch_size=args.batch_size)

    def primed_engine() -> Engine:
        engine = fresh_engine()
        computed_bound(engine)
        return engine

    def plain(_: Any) -> None:
        with torch.no_grad():
            for x, _ in batches():
                predict(model(x))

    def lipschitz_certificates(_: Any) -> None:
        with torch.no_grad(), margins.full_float32():
            for x, y in batches():
                logits = model(x)
                margins.certified_radius(logits, claimed, kappa=KAPPA)
                joint.certified_pixel_accuracy_counts(
                    logits, y, claimed, eps, ignore_index=255, kappa=KAPPA
                )

    def smoothing(_: Any) -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        for x, _ in batches():
            smoothing_certify(model, x, config, generator=generator, num_classes=8)

    runners: dict[str, Runner] = {
        "plain": Runner("plain inference", plain),
        "lipschitz": Runner("Lipschitz certificates", lipschitz_certificates),
        "bound": Runner("bound from the weights (once per audit)", computed_bound, fresh_engine),
        "harness": Runner(
            "harness certification, L from the weights",
            lambda engine: certify_lipschitz(engine, "auto", radii),
            fresh_engine,
        ),
        "search": Runner(
            "harness certification, claimed L + search",
            lambda engine: certify_lipschitz(engine, claimed, radii),
            fresh_engine,
        ),
        "claim": Runner(
            "whole certified claim (bound cached)",
            lambda engine: measure_items(engine, items),
            primed_engine,
        ),
        "smoothing": Runner("randomized smoothing", smoothing),
    }
    counter = ImageCounter(model, list(runners))
    print(
        f"device {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.net} model (claimed "
        f"L = {claimed:.4f}), {args.images} images {h}x{w}, batch {args.batch_size}; "
        f"smoothing sigma {args.sigma}, n {args.n}, n0 {args.n0}, tau {args.tau}, alpha "
        f"{args.alpha} (radius {config.radius:.4f}); harness and claim at radii "
        f"{', '.join(f'{r:g}' for r in radii)} ({len(items)} items of {SUITE}'s certified "
        f"claims); {args.repeats} repeats (median)"
    )
    times: dict[str, list[float]] = {k: [] for k in runners}
    # One untimed round first: imports, allocator warm-up, TorchScript's profiling runs.
    for repeat in range(args.repeats + 1):
        if repeat == 1:
            counter.reset()
        for name, runner in runners.items():
            state = runner.setup()
            sync(device)
            counter.current = name
            start = time.perf_counter()
            runner.run(state)
            sync(device)
            elapsed = time.perf_counter() - start
            counter.current = None
            if repeat:
                times[name].append(elapsed)
    per_image = {k: statistics.median(v) / args.images for k, v in times.items()}
    passes = {k: v / args.repeats / args.images for k, v in counter.images.items()}
    for name, runner in runners.items():
        print(
            f"  {runner.label:44s} {per_image[name] * 1e3:9.2f} ms/image  "
            f"forward passes per image {passes[name]:7.2f}"
        )
    report_ratios(per_image, args.images)


def report_ratios(t: dict[str, float], images: int) -> None:
    plain = t["plain"]
    rows = [
        ("Lipschitz certificates / plain inference", t["lipschitz"] / plain, "goal <= 1.1"),
        ("smoothing / Lipschitz certificates", t["smoothing"] / t["lipschitz"], "goal >= 100"),
        (
            "whole certified claim (bound cached) / plain inference",
            t["claim"] / plain,
            "goal <= 1.5",
        ),
        (
            "whole certified claim + bound / plain inference",
            (t["claim"] + t["bound"]) / plain,
            f"the bound is once per audit: {t['bound'] * images:.2f} s over {images} images",
        ),
        (
            "harness certification, L from the weights / plain",
            t["harness"] / plain,
            "as plugin runs of the demo: bound included",
        ),
        (
            "harness certification, claimed L + search / plain",
            t["search"] / plain,
            "only where a constant is claimed",
        ),
    ]
    for label, value, note in rows:
        print(f"{label:56s} = {value:8.3f}  ({note})")


if __name__ == "__main__":
    main()

"""Hypothesis strategies over corruptions and perturbations, for claims and for your own tests.

A strategy here draws only a few numbers (a corruption's name, a severity, a seed, a box, a
perturbation's shape); the tensors are built from them on the images' device by
:meth:`CorruptionParams.apply` and :meth:`Perturbation.apply`.  So Hypothesis shrinks and
stores a handful of parameters, never megabytes of pixels, and a failure reads as a sentence
("brightness at severity 2.71, seed 0").

Use them in a plain Hypothesis test through the audit's fixtures (README, "Fixtures for your
own tests"); ``corruption_search`` and ``invariance`` claims use the same ones.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from audit.corruptions import CORRUPTIONS, corrupt

__all__ = [
    "CI_PROFILE",
    "NORMS",
    "SHAPES",
    "Box",
    "CorruptionParams",
    "Perturbation",
    "boxes",
    "corruption_params",
    "example_database",
    "image_seed",
    "perturbations",
    "search_settings",
]

#: perturbation shapes :func:`perturbations` draws from
SHAPES = ("dense", "sparse", "patch", "lowfreq")
NORMS = ("linf", "l2")
#: the Hypothesis settings profile for CI runs of your own tests (registered on import):
#: derandomised, so a run is the same on every machine; no example database, no deadline
CI_PROFILE = "segaudit-ci"
#: the severity scale of imagecorruptions, which :func:`audit.corruptions.corrupt` extends
#: linearly down to 0 (the identity)
SEVERITY_RANGE = (0.0, 5.0)
_SEED_BITS = 31

settings.register_profile(
    CI_PROFILE,
    derandomize=True,
    database=None,
    # every example is a forward pass of a network: seconds, by design
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` under the drawn ``seed``: each image gets its own noise,
    and the same image gets the same noise whatever batch it is in."""
    digest = hashlib.sha256(repr((int(seed), int(index))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << _SEED_BITS) - 1)


@dataclass(frozen=True)
class Box:
    """A rectangle as fractions of the image: ``top``/``left`` corner, ``height``/``width``."""

    top: float
    left: float
    height: float
    width: float

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Rows ``r0:r1`` and columns ``c0:c1`` the box covers (at least one pixel each)."""
        r0 = min(int(self.top * height), height - 1)
        c0 = min(int(self.left * width), width - 1)
        r1 = max(r0 + 1, min(height, round((self.top + self.height) * height)))
        c1 = max(c0 + 1, min(width, round((self.left + self.width) * width)))
        return r0, r1, c0, c1

    def mask(self, height: int, width: int, device: torch.device | str) -> torch.Tensor:
        """``1 x 1 x H x W`` float mask, 1 inside the box."""
        r0, r1, c0, c1 = self.pixels(height, width)
        mask = torch.zeros(1, 1, height, width, device=device)
        mask[..., r0:r1, c0:c1] = 1.0
        return mask


def _range(value: Any, name: str, low: float, high: float) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name}: expected [low, high], got {value!r} ({type(value).__name__})")
    lo, hi = float(value[0]), float(value[1])
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name}: expected {low:g} <= low <= high <= {high:g}, got {value!r}")
    return lo, hi


def boxes(
    height: Sequence[float] = (0.1, 0.5), width: Sequence[float] = (0.1, 0.5)
) -> st.SearchStrategy[Box]:
    """Boxes whose ``height`` and ``width`` (fractions of the image) lie in the given ranges,
    anywhere in the image; they shrink towards the smallest box in the top-left corner."""
    h_range = _range(height, "height", 0.0, 1.0)
    w_range = _range(width, "width", 0.0, 1.0)

    @st.composite
    def draw(data: st.DrawFn) -> Box:
        h = data(st.floats(*h_range, allow_nan=False))
        w = data(st.floats(*w_range, allow_nan=False))
        top = data(st.floats(0.0, max(0.0, 1.0 - h), allow_nan=False))
        left = data(st.floats(0.0, max(0.0, 1.0 - w), allow_nan=False))
        return Box(top, left, h, w)

    return draw()


@dataclass(frozen=True)
class CorruptionParams:
    """One corruption as drawn: name, severity (0-5, fractional allowed), seed, and an
    optional box outside which the image stays untouched."""

    corruption: str
    severity: float
    seed: int = 0
    box: Box | None = None

    def apply(self, images: torch.Tensor, indices: Sequence[int] | None = None) -> torch.Tensor:
        """The corrupted ``images`` (N x 3 x H x W in [0, 1]), on their device; ``indices``
        (the images' positions in the dataset, default 0..N-1) pick each image's seed."""
        indices = range(len(images)) if indices is None else indices
        seeds = [image_seed(self.seed, i) for i in indices]
        out = corrupt(self.corruption, images, float(self.severity), seeds=seeds)
        if self.box is None:
            return out
        mask = self.box.mask(images.shape[-2], images.shape[-1], images.device)
        return images * (1 - mask) + out * mask

    def describe(self) -> str:
        text = f"{self.corruption} at severity {self.severity:.4g} (seed {self.seed})"
        if self.box is not None:
            b = self.box
            text += (
                f" inside the box top {b.top:.3g}, left {b.left:.3g}, height {b.height:.3g}, "
                f"width {b.width:.3g} (fractions of the image)"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corruption_params(
    corruptions: Sequence[str] | None = None,
    severity: Sequence[float] = SEVERITY_RANGE,
    *,
    region: Any = None,
) -> st.SearchStrategy[CorruptionParams]:
    """Corruptions from ``corruptions`` (default: every registered one) at a severity in
    ``severity = [low, high]`` (continuous), with a seed; with ``region`` (a :func:`boxes`
    strategy, or a mapping ``{"height": [lo, hi], "width": [lo, hi]}``) applied inside a box.

    Shrinks towards the first corruption listed, severity ``low`` and seed 0.
    """
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    if not names:
        raise ValueError("corruptions: expected at least one corruption name, got []")
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"corruptions: unknown {unknown}; known: {', '.join(sorted(CORRUPTIONS))}")
    lo, hi = _range(severity, "severity", *SEVERITY_RANGE)
    if region is None:
        box_strategy: st.SearchStrategy[Box | None] = st.none()
    elif isinstance(region, st.SearchStrategy):
        box_strategy = region
    else:
        box_strategy = boxes(**dict(region))
    return st.builds(
        CorruptionParams,
        corruption=st.sampled_from(names),
        severity=st.floats(lo, hi, allow_nan=False, allow_infinity=False),
        seed=st.integers(0, (1 << _SEED_BITS) - 1),
        box=box_strategy,
    )


@dataclass(frozen=True)
class Perturbation:
    """A perturbation of norm ``eps`` (exactly, before clipping to [0, 1]) in ``norm``, of a
    ``shape`` drawn from a seed and a few numbers:

    * ``dense``: Gaussian noise over every value;
    * ``sparse``: noise on a random ``density`` share of the pixels, zero elsewhere;
    * ``patch``: noise inside ``box`` only;
    * ``lowfreq``: noise on a ``grid`` x ``grid`` lattice upsampled bilinearly (smooth).
    """

    shape: str
    norm: str
    eps: float
    seed: int = 0
    density: float = 1.0
    box: Box | None = None
    grid: int = 4

    def delta(self, images: torch.Tensor) -> torch.Tensor:
        """The perturbation for ``images`` (same shape and device)."""
        n, c, h, w = images.shape
        generator = torch.Generator().manual_seed(self.seed)
        # Drawn on the CPU: the same seed gives the same perturbation on every device.
        if self.shape == "lowfreq":
            coarse = torch.randn(n, c, self.grid, self.grid, generator=generator)
            noise = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        else:
            noise = torch.randn(n, c, h, w, generator=generator)
        noise = noise.to(images.device, images.dtype)
        if self.shape == "sparse":
            keep = torch.rand(n, 1, h, w, generator=generator) < self.density
            noise = noise * keep.to(images.device, images.dtype)
        elif self.shape == "patch" and self.box is not None:
            noise = noise * self.box.mask(h, w, images.device)
        if self.norm == "linf":
            # Every touched value at +-eps: the corners of the ball, where damage is largest.
            return self.eps * torch.sign(noise)
        norms = noise.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return self.eps * noise / norms

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` perturbed and clipped to [0, 1] (clipping only shrinks the norm)."""
        return (images + self.delta(images)).clamp(0, 1)

    def describe(self) -> str:
        extra = {
            "sparse": f", density {self.density:.3g}",
            "lowfreq": f", {self.grid}x{self.grid} grid",
            "patch": ""
            if self.box is None
            else f", box top {self.box.top:.3g} left {self.box.left:.3g} height "
            f"{self.box.height:.3g} width {self.box.width:.3g}",
        }.get(self.shape, "")
        return (
            f"{self.shape} {self.norm} perturbation of norm {self.eps:g} (seed {self.seed}{extra})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perturbations(
    eps: float, norm: str, shapes: Sequence[str] = SHAPES
) -> st.SearchStrategy[Perturbation]:
    """Perturbations on the ``norm`` sphere of radius ``eps`` (in [0, 1] pixel space), of the
    given ``shapes``; shrinks towards the first shape and seed 0."""
    if norm not in NORMS:
        raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps):
        raise TypeError(f"eps: expected a finite number, got {eps!r} ({type(eps).__name__})")
    if eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    unknown = [s for s in shapes if s not in SHAPES]
    if not shapes or unknown:
        raise ValueError(f"shapes: expected a non-empty list of {list(SHAPES)}, got {shapes!r}")
    return st.builds(
        Perturbation,
        shape=st.sampled_from(list(shapes)),
        norm=st.just(norm),
        eps=st.just(float(eps)),
        seed=st.integers(0, (1 << _SEED_BITS) - 1),
        density=st.floats(0.01, 0.5, allow_nan=False),
        box=boxes((0.05, 0.5), (0.05, 0.5)),
        grid=st.integers(2, 16),
    )


def example_database(path: Path | None) -> ExampleDatabase | None:
    """Hypothesis' example database in folder ``path`` (``None``: none): a failing example
    is stored there and replayed first on the next run."""
    return None if path is None else DirectoryBasedExampleDatabase(str(path))


def search_settings(*, max_examples: int, database: ExampleDatabase | None) -> settings:
    """The settings of a claim's search: ``max_examples`` examples, the example database,
    no deadline; the seed is set per claim (``hypothesis.seed``) from the audit's seed, so a
    run is deterministic for a fixed seed and database."""
    return settings(
        max_examples=max_examples,
        database=database,
        deadline=None,
        derandomize=False,
        # explain re-runs examples to explain a failure; the claim words its own
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
        report_multiple_bugs=False,
        print_blob=False,
        # Each example is a forward pass over a batch of images, slow by design (too_slow);
        # a box and a severity are few choices, but a strategy over many corruptions with a
        # region can exceed the default data budget (data_too_large).
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

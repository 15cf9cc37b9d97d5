"""Image corruptions as pure, batched torch functions, on a continuous severity scale.

The definitions are those of ``imagecorruptions`` (Michaelis et al. 2019, after Hendrycks
& Dietterich 2019), which the Cityscapes-C protocol of Kamann & Rother uses: at severities
1-5 every corruption here takes exactly the reference's parameters, and its output matches
the reference's within the tolerances of docs/corruptions.md (tests/test_corruptions.py
checks them).  ``frost`` and ``spatter`` are left out (docs/corruptions.md says why);
``occlusion`` is SegAudit's own::

    from audit.corruptions import CORRUPTIONS, corrupt
    foggy = corrupt("fog", images, 2.5, seeds=[0, 1, 2, 3])

- ``images``: ``B x 3 x H x W`` floats in [0, 1] on any device; the result has the same
  shape, dtype and device, clamped to [0, 1], computed on that device.
- ``severity``: a float in [0, 5].  0 is the identity; between integers the parameters are
  interpolated linearly (from each corruption's *identity parameters* below 1), which is
  the scale a Hypothesis search draws from.
- ``seeds``: one integer per image.  Every random draw for image ``i`` comes from a
  generator seeded with ``seeds[i]`` alone, so an image corrupts the same alone or in any
  batch (bit for bit on one device; CPU and CUDA generators give different streams).

A plug-in adds a corruption through the ``segaudit.corruptions`` entry-point group, whose
value is a :class:`Corruption`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from audit.corruptions.base import FAMILIES, Corruption, CorruptionFunction, generators
from audit.corruptions.blur import BLUR
from audit.corruptions.digital import DIGITAL
from audit.corruptions.jpeg import JPEG
from audit.corruptions.noise import NOISE
from audit.corruptions.occlusion import OCCLUSION
from audit.corruptions.weather import WEATHER
from audit.errors import ConfigError
from audit.registry import Registry

__all__ = ["CORRUPTIONS", "FAMILIES", "Corruption", "CorruptionFunction", "corrupt"]

MAX_SEVERITY = 5.0
#: imagecorruptions' order (its ``corruption_tuple``), then SegAudit's own
_ORDER = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur",
    "spatter", "saturate", "occlusion",
)  # fmt: skip


class CorruptionTable(Mapping[str, Corruption]):
    """The registered corruptions by name, in a stable order, as a read-only mapping.

    A view of a :class:`~audit.registry.Registry`: built-ins are registered below, third
    parties' entry points are listed without being imported and loaded when looked up.
    """

    def __init__(self, registry: Registry[Corruption]) -> None:
        self.registry = registry

    def __getitem__(self, name: str) -> Corruption:
        return self.registry.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry.names())

    def __len__(self) -> int:
        return len(self.registry.names())

    def __contains__(self, name: object) -> bool:
        return name in self.registry

    def register(self, corruption: Corruption) -> Corruption:
        """Add a corruption (a plug-in's, or a test's)."""
        return self.registry.register(corruption)


_REGISTRY: Registry[Corruption] = Registry("corruption", "segaudit.corruptions")
_BUILTINS = {c.name: c for c in (*NOISE, *BLUR, *WEATHER, *DIGITAL, *JPEG, *OCCLUSION)}
for _name in _ORDER:
    if _name in _BUILTINS:
        _REGISTRY.register(_BUILTINS[_name])

#: every corruption by name: imagecorruptions' order, then SegAudit's own, then plug-ins
CORRUPTIONS = CorruptionTable(_REGISTRY)


def _check(name: str, images: torch.Tensor, severity: float, seeds: Sequence[int] | None):
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ConfigError(
            f"unknown corruption {name!r}; expected one of: {', '.join(CORRUPTIONS)}",
            key="corruption",
        )
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"corruption {name!r}: expected images B x 3 x H x W, got {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"corruption {name!r}: expected float images in [0, 1], got {images.dtype}"
        )
    if isinstance(severity, bool) or not isinstance(severity, int | float):
        raise ConfigError(
            f"corruption {name!r}: severity must be a number in [0, 5], got "
            f"{type(severity).__name__} {severity!r}",
            key="severity",
        )
    if not 0 <= severity <= MAX_SEVERITY:
        raise ConfigError(
            f"corruption {name!r}: severity must be in [0, 5], got {severity!r}", key="severity"
        )
    if seeds is not None and len(seeds) != images.shape[0]:
        raise ValueError(
            f"corruption {name!r}: {len(seeds)} seeds for {images.shape[0]} images; give one "
            "seed per image"
        )


def corrupt(
    name: str, images: torch.Tensor, severity: float, *, seeds: Sequence[int] | None = None
) -> torch.Tensor:
    """``images`` corrupted by ``name`` at ``severity`` (see the module docstring).

    Unknown names and severities out of [0, 5] raise :class:`~audit.errors.ConfigError`
    listing what is accepted.
    """
    _check(name, images, severity, seeds)
    if severity == 0:
        return images.clone()
    corruption = CORRUPTIONS[name]
    gens = generators(seeds if seeds is not None else [0] * images.shape[0], images.device)
    out = corruption.function(images, corruption.params(float(severity)), gens)
    return out.clamp(0, 1).to(images.dtype)

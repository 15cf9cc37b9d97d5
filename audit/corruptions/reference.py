"""The reference, ``imagecorruptions`` 1.1.2, made importable on today's libraries.

Only the tests and ``bench/corruptions.py`` use it (the ``reference`` extra); the audit
never does.  Version 1.1.2 was written for NumPy 1, scikit-image < 0.19 and setuptools with
``pkg_resources``; on current versions it fails to import or to run some corruptions.
:func:`load` patches exactly those spots, without changing any formula:

- ``pkg_resources.resource_filename`` (only frost's image paths): a stand-in that resolves
  a path next to the module;
- ``np.float_`` (fog's plasma fractal): ``np.float64``, which it was an alias of;
- ``gaussian(..., multichannel=True)`` (Gaussian and glass blur): ``channel_axis=-1``,
  which is what ``multichannel`` became.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

_MODULE: Any = None


@contextlib.contextmanager
def _pkg_resources() -> Iterator[None]:
    """Make ``import imagecorruptions`` possible where setuptools no longer ships
    ``pkg_resources``: a stand-in with the one function it uses, in ``sys.modules`` only
    while it is imported.  Left there, it would fool other code that probes for
    ``pkg_resources`` (pytest's ``monkeypatch.syspath_prepend`` calls into it)."""
    if "pkg_resources" in sys.modules:
        yield
        return
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stub = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            return os.path.join(os.path.dirname(sys.modules[package].__file__ or ""), name)

        stub.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
        try:
            yield
        finally:
            if sys.modules.get("pkg_resources") is stub:
                del sys.modules["pkg_resources"]
        return
    yield


def load() -> Any:
    """``imagecorruptions.corruptions``, patched (see the module docstring); ImportError
    if the package is not installed."""
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    with _pkg_resources():
        import imagecorruptions.corruptions as module

    numpy_float = types.SimpleNamespace(float_=np.float64)
    module.np = _Fallback(numpy_float, np)
    original = module.gaussian

    def gaussian(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        if multichannel:
            kwargs["channel_axis"] = -1
        return original(image, *args, **kwargs)

    module.gaussian = gaussian
    _MODULE = module
    return module


@contextlib.contextmanager
def replaying(seed: int, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Within the block, the reference's ``np.random.uniform`` and ``np.random.normal``
    return the numbers SegAudit's corruptions draw for an image with ``seed``: torch's
    ``rand``/``randn`` from a generator seeded with ``seed``, drawn in ``dtype``, in call
    order and shape.  A corruption whose random draws are only those two then gets the
    same random field on both sides, and outputs can be compared pixel by pixel."""
    module = load()
    generator = torch.Generator().manual_seed(int(seed))

    def shape(size: Any) -> tuple[int, ...]:
        return () if size is None else tuple(int(s) for s in np.atleast_1d(size))

    def uniform(low: float = 0.0, high: float = 1.0, size: Any = None) -> Any:
        u = torch.rand(shape(size), generator=generator, dtype=dtype).double().numpy()
        return low + (high - low) * u

    def normal(loc: float = 0.0, scale: float = 1.0, size: Any = None) -> Any:
        z = torch.randn(shape(size), generator=generator, dtype=dtype).double().numpy()
        return loc + scale * z

    saved = module.np
    module.np = _Fallback(
        types.SimpleNamespace(random=types.SimpleNamespace(uniform=uniform, normal=normal)), saved
    )
    try:
        yield
    finally:
        module.np = saved


class _Fallback:
    """Attributes of ``first`` where it has them, else of ``second``."""

    def __init__(self, first: Any, second: Any) -> None:
        self._first, self._second = first, second

    def __getattr__(self, name: str) -> Any:
        if hasattr(self._first, name):
            return getattr(self._first, name)
        return getattr(self._second, name)


def reference_corrupt(name: str, image: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
    """The reference's ``name`` at integer ``severity`` on one ``H x W x 3`` uint8 image,
    as float64 in [0, 255] *before* the reference's final ``np.uint8`` (which truncates),
    NumPy's global generator seeded with ``seed`` (the reference draws from it)."""
    module = load()
    np.random.seed(seed)
    out = getattr(module, name)(Image.fromarray(image), severity)
    return np.asarray(out, dtype=np.float64)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``B x 3 x H x W`` in [0, 1] -> the reference's input: ``H x W x 3`` uint8 arrays."""
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return [p.permute(1, 2, 0).cpu().numpy() for p in pixels]

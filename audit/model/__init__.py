"""Model loading and model metadata.

``load_model`` recognises the file format from its content, refuses pickled code unless
trusted, and returns a :class:`LoadedModel` whose ``module`` is a
:class:`SegmentationWrapper`: [0, 1] images in, full-resolution float logits out.
"""

from __future__ import annotations

from audit.model.checks import all_finite, check_finite, check_num_classes
from audit.model.fingerprint import fingerprint_module, tensor_digest
from audit.model.loading import LoadedModel, load_model
from audit.model.metadata import ModelMetadata
from audit.model.wrapper import OutputResolution, SegmentationWrapper

__all__ = [
    "LoadedModel",
    "ModelMetadata",
    "OutputResolution",
    "SegmentationWrapper",
    "all_finite",
    "check_finite",
    "check_num_classes",
    "fingerprint_module",
    "load_model",
    "tensor_digest",
]

"""Datasets SegAudit audits on: procedural street scenes and real layouts on disk."""

from __future__ import annotations

from audit.data.acdc import ACDC_CONDITIONS, ACDCDataset
from audit.data.base import Sample, SegmentationDataset
from audit.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from audit.data.folder import FolderDataset
from audit.data.spec import open_dataset
from audit.data.synthetic import STREET_CLASSES, SyntheticStreetScenes
from audit.data.voc import VOC_CLASSES, VOCDataset

__all__ = [
    "ACDC_CONDITIONS",
    "CITYSCAPES_CLASSES",
    "STREET_CLASSES",
    "VOC_CLASSES",
    "ACDCDataset",
    "CityscapesDataset",
    "FolderDataset",
    "Sample",
    "SegmentationDataset",
    "SyntheticStreetScenes",
    "VOCDataset",
    "open_dataset",
]

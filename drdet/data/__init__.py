"""Data: COCO/VOC/synthetic datasets, the dataset catalog, transforms, samplers and the loader."""
from .build import aspect_ratio_group_ids, build_data_loader, build_dataset, num_dropped_boxes
from .catalog import datasets_root, get_dataset, known_names
from .collate import collate_detection
from .datasets import COCODataset, VOCDataset
from .samplers import (GroupedBatchSampler, InferenceSampler, IterationBasedBatchSampler,
                       TrainingSampler)
from .transforms import build_transforms

__all__ = [
    "COCODataset", "VOCDataset", "GroupedBatchSampler", "InferenceSampler",
    "IterationBasedBatchSampler", "TrainingSampler", "aspect_ratio_group_ids", "build_data_loader",
    "build_dataset", "build_transforms", "collate_detection", "datasets_root", "get_dataset",
    "known_names", "num_dropped_boxes",
]

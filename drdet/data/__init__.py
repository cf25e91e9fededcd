"""Data: COCO/VOC/synthetic datasets, the dataset catalog, transforms, samplers and the loader."""

from . import config as _config  # noqa: F401  (registers the INPUT and DATALOADER checks)
from .bad_images import BadImage, BadImageLog, TooManyBadImagesError
from .build import (
    DetectionDataLoader,
    aspect_ratio_group_ids,
    build_data_loader,
    build_dataset,
    num_dropped_boxes,
)
from .catalog import datasets_root, get_dataset, known_names
from .collate import collate_detection
from .datasets import COCODataset, VOCDataset
from .image_io import ImageReadError, ImageSizeError, MissingImageError, read_image
from .samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    IterationBasedBatchSampler,
    TrainingSampler,
)
from .transforms import build_transforms

__all__ = [
    "BadImage",
    "BadImageLog",
    "COCODataset",
    "DetectionDataLoader",
    "GroupedBatchSampler",
    "ImageReadError",
    "ImageSizeError",
    "InferenceSampler",
    "IterationBasedBatchSampler",
    "MissingImageError",
    "TooManyBadImagesError",
    "TrainingSampler",
    "VOCDataset",
    "aspect_ratio_group_ids",
    "build_data_loader",
    "build_dataset",
    "build_transforms",
    "collate_detection",
    "datasets_root",
    "get_dataset",
    "known_names",
    "num_dropped_boxes",
    "read_image",
]

"""Dataset classes: COCO json, Pascal VOC xml, and the built-in synthetic shapes generator."""
from .coco import COCODataset, contiguous_to_category_ids
from .synthetic import SyntheticSpec, ensure_dataset
from .voc import VOC_CLASSES, VOCDataset

__all__ = ["COCODataset", "VOCDataset", "VOC_CLASSES", "SyntheticSpec", "contiguous_to_category_ids",
           "ensure_dataset"]

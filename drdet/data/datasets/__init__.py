"""Dataset classes: COCO json, Pascal VOC xml, and the built-in synthetic shapes generator."""

from .coco import COCODataset, contiguous_to_category_ids
from .voc import VOC_CLASSES, VOCDataset

# The synthetic generator (drdet.data.datasets.synthetic) is not imported here so that it runs
# cleanly as `python -m drdet.data.datasets.synthetic`.
__all__ = ["COCODataset", "VOCDataset", "VOC_CLASSES", "contiguous_to_category_ids"]

"""Containers and helpers for boxes and batches of images."""

from drdet.structures.boxes import box_area, clip_boxes, nonempty_boxes, pairwise_iou
from drdet.structures.image_list import ImageList, to_image_list

__all__ = ["ImageList", "to_image_list", "box_area", "clip_boxes", "nonempty_boxes", "pairwise_iou"]

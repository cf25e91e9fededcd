"""COCO-format detection dataset (json + image folder), read through pycocotools."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..image_io import read_image

logger = logging.getLogger(__name__)


def clip_xywh_to_xyxy(xywh: np.ndarray, height: float, width: float) -> np.ndarray:
    """COCO (x, y, w, h) boxes -> x1y1x2y2 clipped to the image (continuous, no "+1").

    Args:
        xywh: (K, 4) float, top-left corner and size in pixels.
    Returns:
        (K, 4) float64 x1y1x2y2 with 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height.
    """
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(xywh[:, 0], 0.0, width)
    y1 = np.clip(xywh[:, 1], 0.0, height)
    x2 = np.clip(xywh[:, 0] + np.maximum(xywh[:, 2], 0.0), 0.0, width)
    y2 = np.clip(xywh[:, 1] + np.maximum(xywh[:, 3], 0.0), 0.0, height)
    return np.stack([x1, y1, x2, y2], axis=1)


class COCODataset(torch.utils.data.Dataset):
    """Detection samples from a COCO json file and the folder of its images.

    Each item is (image, target, index) where, after `transforms` (see drdet.data.transforms),
    image is a (3, H, W) float tensor and target a dict:
        "boxes":     (K, 4) float32, x1y1x2y2 in the resized image's pixels;
        "labels":    (K,) int64, contiguous class ids in 1..C (0 is background);
        "image_id":  int, the COCO image id;
        "orig_size": (h, w) of the image as read (EXIF orientation applied);
        "size":      (h, w) after the transforms.
    Without transforms the image is the PIL RGB image and boxes are in its pixels.

    Crowd annotations never enter the targets. Boxes are clipped to the image and those left
    with zero width or height are dropped; their number is `num_dropped_boxes` (also logged).
    With `remove_images_without_annotations` (training) images left with no box are skipped;
    evaluation keeps every image of the json.

    Category ids: COCO's (possibly sparse) ids map to contiguous labels 1..C in increasing id
    order: `category_id_to_contiguous_id` and, for writing results, `contiguous_id_to_category_id`.
    """

    def __init__(self, ann_file: str, image_root: str, remove_images_without_annotations: bool,
                 transforms: Callable | None = None, name: str | None = None):
        from pycocotools.coco import COCO

        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"COCO annotation file {ann_file!r} does not exist")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"COCO image folder {image_root!r} does not exist")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timings
            self.coco = COCO(ann_file)
        self.name = name or os.path.basename(ann_file)
        self.ann_file = ann_file
        self.image_root = image_root
        self.transforms = transforms

        cat_ids = sorted(self.coco.getCatIds())
        self.category_id_to_contiguous_id: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.contiguous_id_to_category_id: dict[int, int] = {
            v: k for k, v in self.category_id_to_contiguous_id.items()}
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in cat_ids]

        self.num_dropped_boxes = 0
        self.num_crowd_boxes = 0
        self._boxes: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray] = {}
        for img_id in sorted(self.coco.imgs):
            self._boxes[img_id], self._labels[img_id] = self._load_targets(img_id)
        ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if len(self._boxes[i]) > 0]
        self.ids: list[int] = ids
        if self.num_dropped_boxes:
            logger.warning("%s: dropped %d boxes that were empty after clipping to the image",
                           self.name, self.num_dropped_boxes)
        logger.info("%s: %d images (%d in the json), %d classes, %d crowd boxes left out",
                    self.name, len(self.ids), len(self.coco.imgs), self.num_classes,
                    self.num_crowd_boxes)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (labels are 1..C)."""
        return len(self.category_id_to_contiguous_id)

    def _load_targets(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[img_id]
        anns = self.coco.imgToAnns.get(img_id, [])
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        self.num_crowd_boxes += len(crowd)
        unknown = {a["category_id"] for a in anns} - set(self.category_id_to_contiguous_id)
        if unknown:
            raise ValueError(f"{self.ann_file}: image {img_id} has annotations of category ids "
                             f"{sorted(unknown)} that are not in 'categories'")
        boxes = clip_xywh_to_xyxy([a["bbox"] for a in anns], info["height"], info["width"])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.num_dropped_boxes += int((~keep).sum())
        labels = np.array([self.category_id_to_contiguous_id[a["category_id"]] for a in anns],
                          dtype=np.int64)
        return boxes[keep].astype(np.float32), labels[keep]

    def get_img_info(self, index: int) -> dict[str, Any]:
        """The json's record of image `index`: at least "id", "height", "width", "file_name"."""
        return self.coco.imgs[self.ids[index]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        image = read_image(os.path.join(self.image_root, info["file_name"]), img_id)
        w, h = image.size
        boxes, labels = self._boxes[img_id], self._labels[img_id]
        if (h, w) != (info["height"], info["width"]):
            # The json's size disagrees with the decoded (EXIF-rotated) image: clip again.
            boxes = np.minimum(boxes, np.array([w, h, w, h], dtype=np.float32))
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "image_id": int(img_id),
            "orig_size": (h, w),
            "size": (h, w),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target, index

    def __repr__(self) -> str:
        return (f"COCODataset(name={self.name!r}, images={len(self)}, classes={self.num_classes}, "
                f"ann_file={self.ann_file!r})")


def contiguous_to_category_ids(labels: Sequence[int] | torch.Tensor,
                               mapping: dict[int, int]) -> list[int]:
    """Map contiguous labels (1..C) back to dataset category ids for writing results."""
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    try:
        return [mapping[int(label)] for label in labels]
    except KeyError as err:
        raise ValueError(f"label {err.args[0]} is not a contiguous class id (1..{len(mapping)})") from None

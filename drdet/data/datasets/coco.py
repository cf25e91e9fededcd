"""COCO-format detection dataset (json + image folder), read through pycocotools."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..bad_images import GuardedReads
from ..image_io import read_image
from ..registry import DATASET_TYPES, DatasetType, require_path, two_parts

logger = logging.getLogger(__name__)

# Why a training image has no box (keys of COCODataset.skipped_images).
NO_ANNOTATIONS = "with no annotations"
CROWD_ONLY = "with crowd boxes only"
NO_USABLE_BOX = "whose boxes are all empty after clipping to the image or of zero or negative size"
NAMED_IDS = 5  # ids named in a warning


def first_ids(ids: Sequence, limit: int = NAMED_IDS) -> str:
    """"3, 7, 9" of the first `limit` ids, with ", ..." when there are more."""
    return ", ".join(map(str, ids[:limit])) + (", ..." if len(ids) > limit else "")


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def load_coco_json(path: str) -> dict[str, Any]:
    """Read and check a COCO annotation file; every error is a ValueError naming `path` and the
    image, annotation or category at fault.

    Checked: valid JSON (the error gives line and column); an object with the lists "images" and
    "categories" ("annotations" may be absent: image-info files such as test-dev); images with
    "id", "file_name" and positive "width"/"height"; categories with "id" and "name"; annotations
    with "id", "image_id", "category_id" and a "bbox" of 4 finite numbers, naming a known image
    and category; no duplicate ids. A missing "iscrowd" becomes 0 and a missing "area" the box's
    area (pycocotools' evaluation reads both).
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: "
                         f"{err.msg}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO annotation file holds a JSON object, not a "
                         f"{type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: no {key!r} list" if key not in data else
                             f"{path}: {key!r} must be a list, not a {type(data[key]).__name__}")
    annotations = data.setdefault("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: 'annotations' must be a list, not a {type(annotations).__name__}")

    cat_ids = _checked_ids(path, data["categories"], "category", ("id", "name"))
    image_ids = _checked_ids(path, data["images"], "image", ("id", "file_name", "width", "height"))
    for img in data["images"]:
        for key in ("width", "height"):
            if not _is_number(img[key]) or img[key] <= 0:
                raise ValueError(f"{path}: image id {img['id']} ({img['file_name']!r}) has "
                                 f"{key} {img[key]!r}; it must be a positive number of pixels")
    seen: set = set()
    for position, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotation #{position} is a {type(ann).__name__}, "
                             "not an object")
        where = (f"annotation id {ann['id']}" if "id" in ann
                 else f"annotation #{position} (counting from 0)")
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        if missing:
            raise ValueError(f"{path}: {where} has no {', '.join(map(repr, missing))}")
        for key in ("id", "image_id", "category_id"):
            if not _is_id(ann[key]):
                raise ValueError(f"{path}: {where} has {key} {ann[key]!r}; ids are integers")
        if ann["id"] in seen:
            raise ValueError(f"{path}: {where} appears twice (annotation ids must be unique)")
        seen.add(ann["id"])
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise ValueError(f"{path}: {where} has bbox {bbox!r}; expected [x, y, width, "
                             "height], 4 finite numbers")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{path}: {where} names image id {ann['image_id']!r}, which is not "
                             "in 'images'")
        if ann["category_id"] not in cat_ids:
            raise ValueError(f"{path}: {where} names category id {ann['category_id']!r}, which "
                             "is not in 'categories'")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(max(bbox[2], 0) * max(bbox[3], 0)))
    return data


def _checked_ids(path: str, entries: list, what: str, keys: tuple[str, ...]) -> set:
    ids: set = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {what} #{position} is a {type(entry).__name__}, not an object")
        where = f"{what} id {entry['id']}" if "id" in entry else f"{what} #{position} (counting from 0)"
        missing = [k for k in keys if k not in entry]
        if missing:
            raise ValueError(f"{path}: {where} has no {', '.join(map(repr, missing))}")
        if not _is_id(entry["id"]):
            raise ValueError(f"{path}: {where} has id {entry['id']!r}; ids are integers")
        if entry["id"] in ids:
            raise ValueError(f"{path}: {where} appears twice ({what} ids must be unique)")
        ids.add(entry["id"])
    return ids


class COCODataset(GuardedReads, torch.utils.data.Dataset):
    """Detection samples from a COCO json file and the folder of its images.

    Each item is (image, target, index) where, after `transforms` (see drdet.data.transforms),
    image is a (3, H, W) float tensor and target a dict:
        "boxes":     (K, 4) float32, x1y1x2y2 in the resized image's pixels;
        "labels":    (K,) int64, contiguous class ids in 1..C (0 is background);
        "image_id":  int, the COCO image id;
        "orig_size": (h, w) of the image as read (the json's height and width);
        "size":      (h, w) after the transforms.
    Without transforms the image is the PIL RGB image and boxes are in its pixels.

    The json is checked on loading (load_coco_json: errors name the file and the image,
    annotation or category id). Images are read by drdet.data.image_io.read_image with the json's
    size as the expected one: 8-bit RGB whatever the file's mode; EXIF orientation applied unless
    the json's width/height are those of the stored, un-rotated pixels; an image that is missing,
    undecodable or of another size raises an ImageReadError naming file and image id (which
    build_data_loader's read policy turns into a skip or a clear error, see
    drdet.data.bad_images).

    Crowd annotations never enter the targets. Boxes are clipped to the image (their number is
    `num_clipped_boxes`) and those left with zero width or height (also boxes of zero or negative
    size) are dropped; their number is `num_dropped_boxes` (both logged with the first
    annotation ids). With `remove_images_without_annotations` (training) images left with no box
    are skipped, counted by reason in `skipped_images` ({NO_ANNOTATIONS / CROWD_ONLY /
    NO_USABLE_BOX: count}); evaluation keeps every image of the json. `annotation_source` (the
    json) and `num_images_listed` let build_data_loader say why a training set is empty. An
    image file listed under two image ids is warned about once.

    Category ids: COCO's (possibly sparse) ids map to contiguous labels 1..C in increasing id
    order: `category_id_to_contiguous_id` and, for writing results, `contiguous_id_to_category_id`.

    Evaluated by the evaluators named in `evaluators` (drdet.evaluation.EVALUATORS).
    """

    evaluators: tuple[str, ...] = ("coco",)

    def __init__(self, ann_file: str, image_root: str, remove_images_without_annotations: bool,
                 transforms: Callable | None = None, name: str | None = None):
        from pycocotools.coco import COCO

        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"COCO annotation file {ann_file!r} does not exist")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"COCO image folder {image_root!r} does not exist")
        self.coco = COCO()
        self.coco.dataset = load_coco_json(ann_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.name = name or os.path.basename(ann_file)
        self.ann_file = ann_file
        self.image_root = image_root
        self.transforms = transforms

        cat_ids = sorted(self.coco.getCatIds())
        self.category_id_to_contiguous_id: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.contiguous_id_to_category_id: dict[int, int] = {
            v: k for k, v in self.category_id_to_contiguous_id.items()}
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in cat_ids]

        self.annotation_source = ann_file
        self.num_images_listed = len(self.coco.imgs)
        self.num_dropped_boxes = 0
        self.num_clipped_boxes = 0
        self.num_crowd_boxes = 0
        self._clipped_ids: list = []  # the first annotation ids of each kind (> NAMED_IDS: "...")
        self._dropped_ids: list = []
        self._boxes: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray] = {}
        for img_id in sorted(self.coco.imgs):
            self._boxes[img_id], self._labels[img_id] = self._load_targets(img_id)
        ids = sorted(self.coco.imgs)
        self.skipped_images: dict[str, int] = {}
        if remove_images_without_annotations:
            for i in ids:
                if len(self._boxes[i]) == 0:
                    why = self._why_no_box(i)
                    self.skipped_images[why] = self.skipped_images.get(why, 0) + 1
            ids = [i for i in ids if len(self._boxes[i]) > 0]
        self.ids: list[int] = ids
        if self.num_dropped_boxes or self.num_clipped_boxes:
            logger.warning("%s: %d boxes clipped to their image%s; %d dropped, empty after "
                           "clipping or of zero or negative size%s", ann_file,
                           self.num_clipped_boxes, _named_ids(self._clipped_ids),
                           self.num_dropped_boxes, _named_ids(self._dropped_ids))
        self._warn_duplicate_files()
        logger.info("%s: %d images (%d in the json), %d classes, %d crowd boxes left out",
                    self.name, len(self.ids), len(self.coco.imgs), self.num_classes,
                    self.num_crowd_boxes)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (labels are 1..C)."""
        return len(self.category_id_to_contiguous_id)

    def _why_no_box(self, img_id: int) -> str:
        anns = self.coco.imgToAnns.get(img_id, [])
        if not anns:
            return NO_ANNOTATIONS
        return CROWD_ONLY if all(a.get("iscrowd", 0) for a in anns) else NO_USABLE_BOX

    def _warn_duplicate_files(self) -> None:
        """One warning naming the image files listed under more than one image id, with them."""
        by_file: dict[str, list] = {}
        for img_id, info in self.coco.imgs.items():
            by_file.setdefault(os.path.normpath(info["file_name"]), []).append(img_id)
        repeated = [f"{f!r} (ids {', '.join(map(str, i))})" for f, i in by_file.items()
                    if len(i) > 1]
        if repeated:
            logger.warning("%s: %d image files are listed under more than one image id (the "
                           "same pixels count as several images): %s", self.annotation_source,
                           len(repeated), first_ids(repeated))

    def _load_targets(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[img_id]
        anns = self.coco.imgToAnns.get(img_id, [])
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        self.num_crowd_boxes += len(crowd)
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = clip_xywh_to_xyxy(xywh, info["height"], info["width"])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        unclipped = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        clipped = keep & (np.abs(boxes - unclipped) > 1e-6).any(axis=1)
        self.num_dropped_boxes += int((~keep).sum())
        self.num_clipped_boxes += int(clipped.sum())
        for ids, mask in ((self._clipped_ids, clipped), (self._dropped_ids, ~keep)):
            if len(ids) <= NAMED_IDS:
                ids.extend(a["id"] for a, m in zip(anns, mask) if m)
        labels = np.array([self.category_id_to_contiguous_id[a["category_id"]] for a in anns],
                          dtype=np.int64)
        return boxes[keep].astype(np.float32), labels[keep]

    def get_img_info(self, index: int) -> dict[str, Any]:
        """The json's record of image `index`: at least "id", "height", "width", "file_name"."""
        return self.coco.imgs[self.ids[index]]

    def __len__(self) -> int:
        return len(self.ids)

    def load_item(self, index: int):
        """(image, target, index) of entry `index` (see the class docstring); raises an
        ImageReadError naming file and image id when the image cannot be used."""
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        image = read_image(os.path.join(self.image_root, info["file_name"]), img_id,
                           expected_size=(info["height"], info["width"]))
        w, h = image.size  # == the json's width and height (read_image checks)
        boxes, labels = self._boxes[img_id], self._labels[img_id]
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


def _named_ids(ids: list) -> str:
    return f" (annotation ids {first_ids(ids)})" if ids else ""


def contiguous_to_category_ids(labels: Sequence[int] | torch.Tensor,
                               mapping: dict[int, int]) -> list[int]:
    """Map contiguous labels (1..C) back to dataset category ids for writing results."""
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    try:
        return [mapping[int(label)] for label in labels]
    except KeyError as err:
        raise ValueError(f"label {err.args[0]} is not a contiguous class id (1..{len(mapping)})") from None


# ---- the "coco" dataset type (drdet/data/registry.py) ----

# name -> (image folder, annotation json), relative to the datasets root.
COCO_DATASETS: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": ("coco/val2014",
                                  "coco/annotations/instances_valminusminival2014.json"),
}


def _coco_checked(name: str, ann: str, img_dir: str, from_root: bool, transforms: Callable | None,
                  is_train: bool) -> COCODataset:
    require_path(ann, name, "annotation file", from_root)
    require_path(img_dir, name, "image folder", from_root)
    return COCODataset(ann, img_dir, remove_images_without_annotations=is_train,
                       transforms=transforms, name=name)


def _coco_from_parts(name: str, parts: list[str], transforms: Callable | None,
                     is_train: bool) -> COCODataset:
    ann, img_dir = two_parts(name, parts)
    return _coco_checked(name, ann, img_dir, False, transforms, is_train)


def _coco_from_entry(name: str, entry: tuple[str, str], root: str, transforms: Callable | None,
                     is_train: bool) -> COCODataset:
    img_dir, ann = (os.path.join(root, p) for p in entry)
    return _coco_checked(name, ann, img_dir, True, transforms, is_train)


DATASET_TYPES.register("coco", DatasetType(
    form="coco:<json>:<image folder>", from_parts=_coco_from_parts, max_parts=2,
    names=COCO_DATASETS, from_entry=_coco_from_entry))

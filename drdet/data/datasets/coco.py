"""COCO-format detection dataset (json + image folder), kept in flat arrays."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from drdet.utils.errors import UserFileNotFoundError
from drdet.utils.memory import release_free_heap

from ..bad_images import GuardedReads
from ..image_io import read_image
from ..registry import DATASET_TYPES, DatasetType, require_path, two_parts
from .coco_json import load_coco_json, read_coco_columns
from .coco_table import (
    CROWD_ONLY,
    NAMED_IDS,
    NO_ANNOTATIONS,
    NO_USABLE_BOX,
    build_coco_table,
    clip_xywh_to_xyxy,
    repeated_files,
)

logger = logging.getLogger(__name__)

__all__ = [
    "COCODataset",
    "CROWD_ONLY",
    "NAMED_IDS",
    "NO_ANNOTATIONS",
    "NO_USABLE_BOX",
    "clip_xywh_to_xyxy",
    "contiguous_to_category_ids",
    "first_ids",
    "load_coco_json",
]


def first_ids(ids: Sequence, limit: int = NAMED_IDS) -> str:
    """ "3, 7, 9" of the first `limit` ids, with ", ..." when there are more."""
    return ", ".join(map(str, ids[:limit])) + (", ..." if len(ids) > limit else "")


def _pixels(value: float) -> int | float:
    """A json size back as the json wrote it: an int when whole."""
    return int(value) if float(value).is_integer() else float(value)


def check_image_root(ann_file: str, image_root: str, file_names) -> None:
    """An error when none of the image files `ann_file` lists is under `image_root` (a folder
    one level off): found when a training set is loaded instead of as unreadable images in the
    loader (evaluation reads no image when only scoring detections). Stops at the first file
    found."""
    for name in file_names:
        if os.path.isfile(os.path.join(image_root, name)):
            return
    if len(file_names):
        first = os.path.join(image_root, file_names[0])
        raise UserFileNotFoundError(
            f"0 of {len(file_names)} image files found under {image_root} (listed in "
            f"{ann_file}, e.g. {first}): is the image folder one level off?"
        )


def _warn_clipped_boxes(ann_file: str, table) -> None:
    """One warning for the boxes of `table` clipped to their image or dropped, with a hint at
    the bbox format (x1, y1, x2, y2 written where COCO wants x, y, width, height)."""
    if table.num_dropped_boxes or table.num_clipped_boxes:
        logger.warning(
            "%s: %d boxes clipped to their image%s; %d dropped, empty after "
            "clipping or of zero or negative size%s. COCO's bbox is [x, y, width, "
            "height]: boxes written as [x1, y1, x2, y2] come out like this",
            ann_file,
            table.num_clipped_boxes,
            _named_ids(table.clipped_ids),
            table.num_dropped_boxes,
            _named_ids(table.dropped_ids),
        )


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

    The json is checked on loading (drdet.data.datasets.coco_json: errors name the file and the
    image, annotation or category id; image ids must be integers). Images are read by
    drdet.data.image_io.read_image with the json's size as the expected one: 8-bit RGB whatever
    the file's mode; EXIF orientation applied unless the json's width/height are those of the
    stored, un-rotated pixels; an image that is missing, undecodable or of another size raises
    an ImageReadError naming file and image id (which build_data_loader's read policy turns into
    a skip or a clear error, see drdet.data.bad_images).

    Crowd annotations never enter the targets. Boxes are clipped to the image (their number is
    `num_clipped_boxes`) and those left with zero width or height (also boxes of zero or negative
    size) are dropped; their number is `num_dropped_boxes` (both logged with the first
    annotation ids). With `remove_images_without_annotations` (training) images left with no box
    are skipped, counted by reason in `skipped_images` ({NO_ANNOTATIONS / CROWD_ONLY /
    NO_USABLE_BOX: count}); evaluation keeps every image of the json. `annotation_source` (the
    json) and `num_images_listed` let build_data_loader say why a training set is empty. An
    image file listed under two image ids is warned about once.

    Memory: the targets, sizes and file names live in a few flat numpy arrays (a `CocoTable`,
    drdet.data.datasets.coco_table) and nothing of the parsed json is kept, so that DataLoader
    workers read them without copying the main process's pages (drdet.data.flat). The
    pycocotools `COCO` object of the json (`coco`), which evaluation reads, is built on first
    use; `coco_dict()` gives the checked json itself.

    Category ids: COCO's (possibly sparse) ids map to contiguous labels 1..C in increasing id
    order: `category_id_to_contiguous_id` and, for writing results, `contiguous_id_to_category_id`.

    Evaluated by the evaluators named in `evaluators` (drdet.evaluation.EVALUATORS).
    """

    evaluators: tuple[str, ...] = ("coco",)

    def __init__(
        self,
        ann_file: str,
        image_root: str,
        remove_images_without_annotations: bool,
        transforms: Callable | None = None,
        name: str | None = None,
    ):
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"COCO annotation file {ann_file!r} does not exist")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"COCO image folder {image_root!r} does not exist")
        self.name = name or os.path.basename(ann_file)
        self.ann_file = ann_file
        self.image_root = image_root
        self.transforms = transforms
        self.annotation_source = ann_file
        self._coco = None
        columns = read_coco_columns(ann_file)
        cat_ids = sorted(columns.category_ids)
        names = dict(zip(columns.category_ids, columns.category_names))
        self.category_id_to_contiguous_id: dict[int, int] = {
            c: i + 1 for i, c in enumerate(cat_ids)
        }
        self.contiguous_id_to_category_id: dict[int, int] = {
            v: k for k, v in self.category_id_to_contiguous_id.items()
        }
        self.class_names: list[str] = [names[c] for c in cat_ids]
        self.num_images_listed = len(columns.image_ids)
        self._table = build_coco_table(
            ann_file, columns, self.category_id_to_contiguous_id, remove_images_without_annotations
        )
        table = self._table
        self.num_crowd_boxes = table.num_crowd_boxes
        self.num_clipped_boxes = table.num_clipped_boxes
        self.num_dropped_boxes = table.num_dropped_boxes
        self.skipped_images: dict[str, int] = table.skipped_images
        _warn_clipped_boxes(ann_file, table)
        self._warn_duplicate_files(columns)
        if remove_images_without_annotations:  # training; evaluation names the first missing file
            check_image_root(ann_file, image_root, columns.file_names)
        del columns
        release_free_heap()  # the parse's freed heap, before DataLoader workers are forked
        logger.info(
            "%s: %d images (%d in the json), %d classes, %d crowd boxes left out",
            self.name,
            len(self),
            self.num_images_listed,
            self.num_classes,
            self.num_crowd_boxes,
        )

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (labels are 1..C)."""
        return len(self.category_id_to_contiguous_id)

    @property
    def ids(self) -> list[int]:
        """The image id of every entry, in increasing order (a new list at each call)."""
        return self._table.image_ids.tolist()

    @property
    def coco(self):
        """The pycocotools COCO object of the json (built on first use), for evaluation."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self.coco_dict()
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco

    def coco_dict(self) -> dict[str, Any]:
        """The checked json (load_coco_json: "iscrowd" and "area" filled in), read anew."""
        return load_coco_json(self.ann_file)

    def _warn_duplicate_files(self, columns) -> None:
        """One warning naming the image files listed under more than one image id, with them."""
        repeated = repeated_files(columns.file_names, columns.image_ids, os.path.normpath)
        if repeated:
            logger.warning(
                "%s: %d image files are listed under more than one image id (the "
                "same pixels count as several images): %s",
                self.annotation_source,
                len(repeated),
                first_ids(repeated),
            )

    def get_img_info(self, index: int) -> dict[str, Any]:
        """The json's record of image `index`: "id", "height", "width", "file_name"."""
        table = self._table
        return {
            "id": int(table.image_ids[index]),
            "height": _pixels(table.heights[index]),
            "width": _pixels(table.widths[index]),
            "file_name": table.file_names[index],
        }

    def image_sizes(self) -> np.ndarray:
        """(len(self), 2) float64: the (height, width) of every entry, in pixels."""
        return np.stack([self._table.heights, self._table.widths], axis=1)

    def __len__(self) -> int:
        return len(self._table.image_ids)

    def load_item(self, index: int):
        """(image, target, index) of entry `index` (see the class docstring); raises an
        ImageReadError naming file and image id when the image cannot be used."""
        info = self.get_img_info(index)
        image = read_image(
            os.path.join(self.image_root, info["file_name"]),
            info["id"],
            expected_size=(info["height"], info["width"]),
        )
        w, h = image.size  # == the json's width and height (read_image checks)
        target = {
            "boxes": torch.from_numpy(self._table.boxes[index].copy()).reshape(-1, 4),
            "labels": torch.from_numpy(self._table.labels[index].copy()),
            "image_id": info["id"],
            "orig_size": (h, w),
            "size": (h, w),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target, index

    def __repr__(self) -> str:
        return (
            f"COCODataset(name={self.name!r}, images={len(self)}, classes={self.num_classes}, "
            f"ann_file={self.ann_file!r})"
        )


def _named_ids(ids: list) -> str:
    return f" (annotation ids {first_ids(ids)})" if ids else ""


def contiguous_to_category_ids(
    labels: Sequence[int] | torch.Tensor, mapping: dict[int, int]
) -> list[int]:
    """Map contiguous labels (1..C) back to dataset category ids for writing results."""
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    try:
        return [mapping[int(label)] for label in labels]
    except KeyError as err:
        raise ValueError(
            f"label {err.args[0]} is not a contiguous class id (1..{len(mapping)})"
        ) from None


# ---- the "coco" dataset type (drdet/data/registry.py) ----

# name -> (image folder, annotation json), relative to the datasets root.
COCO_DATASETS: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": (
        "coco/val2014",
        "coco/annotations/instances_valminusminival2014.json",
    ),
}


def _coco_checked(
    name: str, ann: str, img_dir: str, from_root: bool, transforms: Callable | None, is_train: bool
) -> COCODataset:
    require_path(ann, name, "annotation file", from_root)
    require_path(img_dir, name, "image folder", from_root)
    return COCODataset(
        ann, img_dir, remove_images_without_annotations=is_train, transforms=transforms, name=name
    )


def _coco_from_parts(
    name: str, parts: list[str], transforms: Callable | None, is_train: bool
) -> COCODataset:
    ann, img_dir = two_parts(name, parts)
    return _coco_checked(name, ann, img_dir, False, transforms, is_train)


def _coco_from_entry(
    name: str, entry: tuple[str, str], root: str, transforms: Callable | None, is_train: bool
) -> COCODataset:
    img_dir, ann = (os.path.join(root, p) for p in entry)
    return _coco_checked(name, ann, img_dir, True, transforms, is_train)


DATASET_TYPES.register(
    "coco",
    DatasetType(
        form="coco:<json>:<image folder>",
        from_parts=_coco_from_parts,
        max_parts=2,
        names=COCO_DATASETS,
        from_entry=_coco_from_entry,
    ),
)

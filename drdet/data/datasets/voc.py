"""Pascal VOC 2007/2012 detection dataset read from its XML annotations."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..bad_images import GuardedReads
from ..flat import RaggedArray, StringArray
from ..image_io import read_image
from ..registry import DATASET_TYPES, DatasetType, require_path, two_parts

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def parse_voc_xml(path: str) -> dict[str, Any]:
    """Parse one VOC annotation file.

    VOC corners are 1-based inclusive pixel indices (xmin..xmax); pixel i covers [i - 1, i] in
    continuous coordinates, so a box becomes (xmin - 1, ymin - 1, xmax, ymax), width
    xmax - xmin + 1, with no "+1" needed afterwards.

    Returns:
        dict with "height", "width" (ints), "boxes" (K, 4) float32 x1y1x2y2, "labels" (K,) int64
        in 1..20 (VOC_CLASSES order) and "difficult" (K,) bool.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"cannot parse VOC annotation {path!r}: {err}") from err

    def text(element: ET.Element | None, tag: str) -> str:
        value = None if element is None else element.findtext(tag)
        if value is None:
            raise ValueError(f"{path}: VOC annotation has no <{tag}>")
        return value

    size = root.find("size")
    height, width = int(text(size, "height")), int(text(size, "width"))
    corners: list[list[float]] = []
    labels: list[int] = []
    difficult: list[bool] = []
    for obj in root.iter("object"):
        name = text(obj, "name").strip().lower()
        if name not in VOC_CLASSES:
            raise ValueError(
                f"{path}: class {name!r} is not one of the 20 PASCAL VOC classes: voc:<folder>:"
                "<split> reads VOC's own classes only; for your own classes convert the XML "
                "files to one COCO json and use coco:<json>:<image folder> (datasets/README.md)"
            )
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(text(bb, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        corners.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(VOC_CLASSES.index(name) + 1)
        difficult.append(int(obj.findtext("difficult") or 0) == 1)
    boxes = np.asarray(corners, dtype=np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return {
        "height": height,
        "width": width,
        "boxes": boxes,
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, bool),
    }


def _flat_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The parsed records in flat arrays (drdet.data.flat), which DataLoader workers read
    without copying the main process's pages."""
    counts = np.array([len(r["boxes"]) for r in records], dtype=np.int64)

    def runs(key: str, dtype, shape: tuple[int, ...]) -> RaggedArray:
        parts = [r[key] for r in records]
        values = np.concatenate(parts) if parts else np.zeros(shape, dtype)
        return RaggedArray(values.astype(dtype).reshape((-1, *shape[1:])), counts)

    return {
        "image_ids": np.array([r["image_id"] for r in records], dtype=np.int64),
        "stems": StringArray([r["stem"] for r in records]),
        "sizes": np.array([(r["height"], r["width"]) for r in records], np.int64).reshape(-1, 2),
        "boxes": runs("boxes", np.float32, (0, 4)),
        "labels": runs("labels", np.int64, (0,)),
        "difficult": runs("difficult", bool, (0,)),
    }


# Why a training image has no box (keys of VOCDataset.skipped_images).
NO_OBJECTS = "with no objects"
DIFFICULT_ONLY = "with difficult objects only"


class VOCDataset(GuardedReads, torch.utils.data.Dataset):
    """Pascal VOC samples from `root` (a VOCdevkit/VOC2007-style folder with Annotations/,
    JPEGImages/ and ImageSets/Main/<split>.txt).

    Items are (image, target, index) like COCODataset's, with labels 1..20 in VOC_CLASSES order
    and "image_id" the integer file stem (e.g. 5 for 000005) or, for non-numeric stems
    (VOC2012's 2008_000008), the index in the split. "Difficult" objects, as in VOC's own
    evaluation, never enter training targets (`is_train=True`); in evaluation they are kept and
    marked by target["difficult"] (K,) bool so the evaluator can ignore them, and they are
    iscrowd=1 in `coco` (the split as a pycocotools COCO object, for the COCO metric of the
    paper's Table 7). With `is_train`, images left with no box are skipped, counted by reason in
    `skipped_images` ({NO_OBJECTS / DIFFICULT_ONLY: count}); `annotation_source` (the image list)
    and `num_images_listed` let build_data_loader say why a training set is empty. The parsed
    annotations are kept in flat arrays (drdet.data.flat), so that DataLoader workers do not
    copy the main process's pages; `records` rebuilds the per-image dicts on demand.

    Evaluated by the COCO metric and the VOC07 11-point mAP (`evaluators`,
    drdet.evaluation.EVALUATORS).
    """

    evaluators: tuple[str, ...] = ("coco", "voc07")

    def __init__(
        self,
        root: str,
        split: str,
        *,
        is_train: bool,
        transforms: Callable | None = None,
        name: str | None = None,
    ):
        list_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"VOC image list {list_file!r} does not exist")
        with open(list_file) as f:
            stems = [line.strip().split()[0] for line in f if line.strip()]
        self.root, self.split, self.is_train = root, split, is_train
        self.name = name or f"voc_{os.path.basename(os.path.normpath(root))}_{split}"
        self.transforms = transforms
        self.class_names = list(VOC_CLASSES)
        self.category_id_to_contiguous_id = {i: i for i in range(1, len(VOC_CLASSES) + 1)}
        self.contiguous_id_to_category_id = dict(self.category_id_to_contiguous_id)
        numeric = all(s.isdigit() for s in stems)
        self.annotation_source, self.num_images_listed = list_file, len(stems)
        self.skipped_images: dict[str, int] = {}
        records = []
        for i, stem in enumerate(stems):
            rec = parse_voc_xml(os.path.join(root, "Annotations", f"{stem}.xml"))
            rec["stem"], rec["image_id"] = stem, int(stem) if numeric else i
            if is_train:
                keep = ~rec["difficult"]
                rec["boxes"], rec["labels"] = rec["boxes"][keep], rec["labels"][keep]
                rec["difficult"] = rec["difficult"][keep]
                if len(rec["boxes"]) == 0:
                    why = DIFFICULT_ONLY if len(keep) else NO_OBJECTS
                    self.skipped_images[why] = self.skipped_images.get(why, 0) + 1
                    continue
            records.append(rec)
        self._table = _flat_records(records)
        self._coco = None

    @property
    def num_classes(self) -> int:
        return len(VOC_CLASSES)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Per image (a new list at each call): {"image_id", "stem", "height", "width",
        "boxes" (K, 4) float32 x1y1x2y2, "labels" (K,) int64, "difficult" (K,) bool}."""
        return [self._record(i) for i in range(len(self))]

    def _record(self, index: int) -> dict[str, Any]:
        t = self._table
        return {
            "image_id": int(t["image_ids"][index]),
            "stem": t["stems"][index],
            "height": int(t["sizes"][index, 0]),
            "width": int(t["sizes"][index, 1]),
            "boxes": t["boxes"][index],
            "labels": t["labels"][index],
            "difficult": t["difficult"][index],
        }

    def get_img_info(self, index: int) -> dict[str, Any]:
        rec = self._record(index)
        return {
            "id": rec["image_id"],
            "height": rec["height"],
            "width": rec["width"],
            "file_name": f"{rec['stem']}.jpg",
        }

    def image_sizes(self) -> np.ndarray:
        """(len(self), 2): the (height, width) of every entry, in pixels."""
        return self._table["sizes"]

    def __len__(self) -> int:
        return len(self._table["image_ids"])

    def load_item(self, index: int):
        """(image, target, index) of entry `index`; raises an ImageReadError naming file and
        image id when the image cannot be read."""
        rec = self._record(index)
        image = read_image(
            os.path.join(self.root, "JPEGImages", f"{rec['stem']}.jpg"), rec["image_id"]
        )
        w, h = image.size
        target = {
            "boxes": torch.from_numpy(rec["boxes"].copy()),
            "labels": torch.from_numpy(rec["labels"].copy()),
            "image_id": rec["image_id"],
            "orig_size": (h, w),
            "size": (h, w),
        }
        if not self.is_train:
            target["difficult"] = torch.from_numpy(rec["difficult"].copy())
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target, index

    def to_coco_dict(self) -> dict[str, Any]:
        """The split in COCO json form (boxes xywh in original pixels; difficult -> iscrowd=1)."""
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for rec in map(self._record, range(len(self))):
            images.append(
                {
                    "id": rec["image_id"],
                    "height": rec["height"],
                    "width": rec["width"],
                    "file_name": f"{rec['stem']}.jpg",
                }
            )
            for box, label, diff in zip(rec["boxes"], rec["labels"], rec["difficult"]):
                x1, y1, x2, y2 = (float(v) for v in box)
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": rec["image_id"],
                        "category_id": int(label),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(diff),
                    }
                )
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
        return {"images": images, "annotations": anns, "categories": cats}

    def coco_dict(self) -> dict[str, Any]:
        """The split as a COCO json dict (`to_coco_dict`), the ground truth of its "coco"
        evaluator."""
        return self.to_coco_dict()

    @property
    def coco(self):
        """pycocotools COCO object of the split (built on first use), for COCO-metric evaluation."""
        if self._coco is None:
            import contextlib
            import io

            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self.to_coco_dict()
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __repr__(self) -> str:
        return f"VOCDataset(name={self.name!r}, images={len(self)}, root={self.root!r})"


# ---- the "voc" dataset type (drdet/data/registry.py) ----

# name -> (VOC folder relative to the datasets root, split)
VOC_DATASETS: dict[str, tuple[str, str]] = {
    "voc_2007_trainval": ("voc/VOC2007", "trainval"),
    "voc_2007_test": ("voc/VOC2007", "test"),
    "voc_2012_trainval": ("voc/VOC2012", "trainval"),
}


def _voc_checked(
    name: str, folder: str, split: str, from_root: bool, transforms: Callable | None, is_train: bool
) -> VOCDataset:
    require_path(folder, name, "VOC folder", from_root)
    require_path(
        os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), name, "image list", from_root
    )
    return VOCDataset(folder, split, is_train=is_train, transforms=transforms, name=name)


def _voc_from_parts(
    name: str, parts: list[str], transforms: Callable | None, is_train: bool
) -> VOCDataset:
    return _voc_checked(name, *two_parts(name, parts), False, transforms, is_train)


def _voc_from_entry(
    name: str, entry: tuple[str, str], root: str, transforms: Callable | None, is_train: bool
) -> VOCDataset:
    folder, split = entry
    return _voc_checked(name, os.path.join(root, folder), split, True, transforms, is_train)


DATASET_TYPES.register(
    "voc",
    DatasetType(
        form="voc:<VOC folder>:<split>",
        from_parts=_voc_from_parts,
        max_parts=2,
        names=VOC_DATASETS,
        from_entry=_voc_from_entry,
    ),
)

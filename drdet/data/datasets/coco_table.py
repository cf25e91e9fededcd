"""The training targets of a checked COCO file (`CocoColumns`) as flat arrays, computed over all
annotations at once: crowd boxes left out, boxes clipped to their image, empty ones dropped,
labels mapped to 1..C, images without a usable box counted by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..flat import RaggedArray, StringArray
from .coco_json import CocoColumns

# Why a training image has no box (keys of COCODataset.skipped_images).
NO_ANNOTATIONS = "with no annotations"
CROWD_ONLY = "with crowd boxes only"
NO_USABLE_BOX = "whose boxes are all empty after clipping to the image or of zero or negative size"
NAMED_IDS = 5  # ids named in a warning


def clip_xywh_to_xyxy(xywh: np.ndarray, height, width) -> np.ndarray:
    """COCO (x, y, w, h) boxes -> x1y1x2y2 clipped to the image (continuous, no "+1").

    Args:
        xywh: (K, 4) float, top-left corner and size in pixels.
        height, width: the image's size in pixels, floats or (K,) arrays (one image per box).
    Returns:
        (K, 4) float64 x1y1x2y2 with 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height.
    """
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(xywh[:, 0], 0.0, width)
    y1 = np.clip(xywh[:, 1], 0.0, height)
    x2 = np.clip(xywh[:, 0] + np.maximum(xywh[:, 2], 0.0), 0.0, width)
    y2 = np.clip(xywh[:, 1] + np.maximum(xywh[:, 3], 0.0), 0.0, height)
    return np.stack([x1, y1, x2, y2], axis=1)


@dataclass
class CocoTable:
    """Per-image arrays of a COCO set, rows in increasing image id order.

    image_ids (N,) int64; file_names; heights, widths (N,) float64 pixels; boxes: run i is
    image i's (K_i, 4) float32 x1y1x2y2 pixels; labels: run i is its (K_i,) int64 1..C.
    """

    image_ids: np.ndarray
    file_names: StringArray
    heights: np.ndarray
    widths: np.ndarray
    boxes: RaggedArray
    labels: RaggedArray
    num_crowd_boxes: int = 0
    num_clipped_boxes: int = 0
    num_dropped_boxes: int = 0
    clipped_ids: list = field(default_factory=list)  # the first NAMED_IDS + 1 annotation ids
    dropped_ids: list = field(default_factory=list)
    skipped_images: dict[str, int] = field(default_factory=dict)


def integer_image_ids(path: str, ids: tuple) -> np.ndarray:
    """(N,) int64 of the json's image ids; a ValueError naming the first one that is not an
    integer (targets and evaluation use integer image ids)."""
    if not set(map(type, ids)) <= {int}:
        bad = next(i for i in ids if type(i) is not int)
        raise ValueError(f"{path}: image id {bad!r} is not an integer (drdet needs integer ids)")
    return np.fromiter(ids, dtype=np.int64, count=len(ids))


def _first(ids: tuple, order: np.ndarray, mask: np.ndarray) -> list:
    return [ids[i] for i in order[np.flatnonzero(mask)[: NAMED_IDS + 1]]]


def _why_no_box(counts_all: np.ndarray, counts_plain: np.ndarray, empty: np.ndarray) -> dict:
    reasons = {
        NO_ANNOTATIONS: int((empty & (counts_all == 0)).sum()),
        CROWD_ONLY: int((empty & (counts_all > 0) & (counts_plain == 0)).sum()),
        NO_USABLE_BOX: int((empty & (counts_plain > 0)).sum()),
    }
    return {why: n for why, n in reasons.items() if n}


def build_coco_table(
    path: str, cols: CocoColumns, category_to_label: dict, drop_images_without_boxes: bool
) -> CocoTable:
    """The targets of `cols` (the checked file `path`); with `drop_images_without_boxes`
    (training) the images left with no box are not in the table and counted by reason."""
    ids = integer_image_ids(path, cols.image_ids)
    image_order = np.argsort(ids, kind="stable")
    sorted_ids = ids[image_order]
    owner_ids = np.fromiter(cols.annotation_image_ids, np.int64, len(cols.annotation_image_ids))
    owner = np.searchsorted(sorted_ids, owner_ids)  # each annotation's row
    order = np.argsort(owner, kind="stable")  # annotations by image, json order within one
    owner, crowd = owner[order], cols.crowd[order]
    plain = ~crowd
    heights, widths = cols.heights[image_order], cols.widths[image_order]
    xywh = cols.bboxes[order][plain]
    boxes = clip_xywh_to_xyxy(xywh, heights[owner[plain]], widths[owner[plain]])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    unclipped = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    clipped = keep & (np.abs(boxes - unclipped) > 1e-6).any(axis=1)
    labels = np.fromiter(
        map(category_to_label.__getitem__, cols.annotation_category_ids),
        np.int64,
        len(cols.annotation_category_ids),
    )[order][plain]
    kept_owner = owner[plain][keep]
    counts = np.bincount(kept_owner, minlength=len(ids))
    plain_order = order[plain]
    table_rows = np.flatnonzero(counts > 0) if drop_images_without_boxes else np.arange(len(ids))
    skipped = {}
    if drop_images_without_boxes:
        every = np.bincount(owner, minlength=len(ids))
        skipped = _why_no_box(every, np.bincount(owner[plain], minlength=len(ids)), counts == 0)
    names = [cols.file_names[i] for i in image_order[table_rows]]
    return CocoTable(
        image_ids=sorted_ids[table_rows],
        file_names=StringArray(names),
        heights=heights[table_rows],
        widths=widths[table_rows],
        boxes=RaggedArray(boxes[keep].astype(np.float32), counts[table_rows]),
        labels=RaggedArray(labels[keep], counts[table_rows]),
        num_crowd_boxes=int(crowd.sum()),
        num_clipped_boxes=int(clipped.sum()),
        num_dropped_boxes=int((~keep).sum()),
        clipped_ids=_first(cols.annotation_ids, plain_order, clipped),
        dropped_ids=_first(cols.annotation_ids, plain_order, ~keep),
        skipped_images=skipped,
    )


def repeated_files(file_names: tuple, image_ids: tuple, normpath) -> list[str]:
    """'name' (ids a, b) for every file listed under more than one image id, in json order."""
    names = list(map(normpath, file_names))
    if len(set(names)) == len(names):
        return []
    repeated = {n for n, k in Counter(names).items() if k > 1}
    by_file: dict[str, list] = {}
    for name, image_id in zip(names, image_ids):
        if name in repeated:
            by_file.setdefault(name, []).append(image_id)
    return [f"{f!r} (ids {', '.join(map(str, i))})" for f, i in by_file.items()]

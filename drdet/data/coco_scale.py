"""COCO-sized annotation files and detections, generated for measuring drdet at COCO's scale.

`write_coco_scale(spec, out_dir)` writes `out_dir/annotations.json` in COCO's form and shape:
sparse image ids in shuffled order, 80 categories with COCO's sparse ids (1..90), a variable
number of boxes per image (some images with none), about 1 % crowd boxes, a 12-point polygon
"segmentation" per box (which a detector never reads but the json parser must), COCO's image
fields (license, urls, date). The pixels are one small JPEG per image shape, every image file a
symlink to it, so that the set costs disk only for its json. `TRAIN2017` and `VAL2017` are the
sizes of COCO 2017's sets (boxes counted without their crowd share).

`make_detections(...)` gives detections for such a set: per image, jittered copies of its
boxes (true and false positives) and random boxes, `per_image` in all, as arrays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
# COCO's 80 category ids: 1..90 without these.
_COCO_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in _COCO_GAPS)


@dataclass(frozen=True)
class CocoScaleSpec:
    """What write_coco_scale generates: `num_images` images of `image_size` (w, h) pixels (a
    quarter of them portrait: (h, w)), `num_boxes` boxes in all, `empty_fraction` of the images
    with none, `crowd_fraction` of the boxes crowd boxes."""

    num_images: int
    num_boxes: int
    image_size: tuple[int, int] = (64, 48)
    empty_fraction: float = 0.01
    crowd_fraction: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.num_images < 1 or self.num_boxes < 0 or min(self.image_size) < 8:
            raise ValueError(f"need num_images >= 1, num_boxes >= 0, image sides >= 8: {self}")


TRAIN2017 = CocoScaleSpec(num_images=118_287, num_boxes=775_000)
VAL2017 = CocoScaleSpec(num_images=5_000, num_boxes=37_840, image_size=(640, 480), seed=1)


def _image_table(spec: CocoScaleSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sparse ids (shuffled), sizes, and each image's number of boxes."""
    ids = rng.choice(6 * spec.num_images, spec.num_images, replace=False) + 1
    portrait = rng.random(spec.num_images) < 0.25
    w, h = spec.image_size
    widths = np.where(portrait, h, w)
    heights = np.where(portrait, w, h)
    has_boxes = rng.random(spec.num_images) >= spec.empty_fraction
    weights = rng.gamma(1.5, size=spec.num_images) * has_boxes
    counts = rng.multinomial(spec.num_boxes, weights / weights.sum())
    return {"ids": ids, "widths": widths, "heights": heights, "counts": counts}


def _boxes(rng: np.random.Generator, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """(K, 4) float xywh inside images of these sizes, sides log-uniform from 2 % to 90 %."""
    frac = np.exp(rng.uniform(np.log(0.02), np.log(0.9), (len(widths), 2)))
    bw, bh = frac[:, 0] * widths, frac[:, 1] * heights
    x = rng.random(len(widths)) * (widths - bw)
    y = rng.random(len(widths)) * (heights - bh)
    return np.round(np.stack([x, y, bw, bh], axis=1), 2)


def _polygons(rng: np.random.Generator, xywh: np.ndarray) -> np.ndarray:
    """(K, 24) 12-point polygons inside the boxes, 2 decimals."""
    t = np.sort(rng.uniform(0, 2 * np.pi, (len(xywh), 12)), axis=1)
    r = rng.uniform(0.6, 1.0, (len(xywh), 12)) / 2
    cx, cy = xywh[:, :1] + xywh[:, 2:3] / 2, xywh[:, 1:2] + xywh[:, 3:4] / 2
    xs = cx + np.cos(t) * r * xywh[:, 2:3]
    ys = cy + np.sin(t) * r * xywh[:, 3:4]
    return np.round(np.stack([xs, ys], axis=2).reshape(len(xywh), 24), 2)


def coco_scale_dict(spec: CocoScaleSpec) -> dict:
    """The COCO json of `spec` as a dict (deterministic in spec.seed)."""
    rng = np.random.default_rng(spec.seed)
    table = _image_table(spec, rng)
    ids = table["ids"].tolist()
    images = [
        {
            "id": i,
            "file_name": f"{i:012d}.jpg",
            "width": w,
            "height": h,
            "license": i % 8 + 1,
            "coco_url": f"http://images.example.org/train/{i:012d}.jpg",
            "date_captured": "2013-11-14 16:28:13",
        }
        for i, w, h in zip(ids, table["widths"].tolist(), table["heights"].tolist())
    ]
    owner = np.repeat(np.arange(spec.num_images), table["counts"])
    xywh = _boxes(rng, table["widths"][owner], table["heights"][owner])
    polygons = _polygons(rng, xywh).tolist()
    area = np.round(0.7 * xywh[:, 2] * xywh[:, 3], 2).tolist()
    crowd = (rng.random(len(owner)) < spec.crowd_fraction).astype(int).tolist()
    categories = rng.choice(COCO_CATEGORY_IDS, len(owner)).tolist()
    annotations = [
        {
            "id": k + 1,
            "image_id": ids[o],
            "category_id": c,
            "bbox": b,
            "area": a,
            "iscrowd": z,
            "segmentation": [p],
        }
        for k, (o, c, b, a, z, p) in enumerate(
            zip(owner.tolist(), categories, xywh.tolist(), area, crowd, polygons)
        )
    ]
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
    return {
        "info": {"description": f"drdet coco_scale {spec}"},
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }


def _write_images(data: dict, image_dir: str) -> None:
    """One JPEG per image shape in image_dir/.shapes, every image a symlink to its shape's."""
    from PIL import Image

    shapes = os.path.join(image_dir, ".shapes")
    os.makedirs(shapes, exist_ok=True)
    for img in data["images"]:
        w, h = img["width"], img["height"]
        target = os.path.join(shapes, f"{w}x{h}.jpg")
        if not os.path.exists(target):
            pixels = np.random.default_rng(w * 7 + h).integers(0, 256, (h, w, 3), np.uint8)
            Image.fromarray(pixels).save(target, quality=90)
        os.symlink(os.path.relpath(target, image_dir), os.path.join(image_dir, img["file_name"]))


def write_coco_scale(spec: CocoScaleSpec, out_dir: str, images: bool = True) -> tuple[str, str]:
    """Write `spec`'s json (and, with `images`, its image symlinks) into `out_dir`, which must
    not exist yet. Returns (json path, image folder)."""
    data = coco_scale_dict(spec)
    image_dir = os.path.join(out_dir, IMAGE_DIR)
    os.makedirs(image_dir)
    if images:
        _write_images(data, image_dir)
    path = os.path.join(out_dir, ANNOTATION_FILE)
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return path, image_dir


def make_detections(data: dict, per_image: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Detections for the images of COCO dict `data`, `per_image` each: up to half of them
    jittered copies of the image's boxes (labelled with the box's category, or another one one
    time in five), the rest random boxes of random categories; scores uniform in (0, 1).

    Returns {"image_ids": (N,) int64, "offsets": (N + 1,) int64, "boxes": (D, 4) float64
    x1y1x2y2 pixels, "scores": (D,) float64, "category_ids": (D,) int64 json ids}; image i's
    detections are rows offsets[i]:offsets[i + 1].
    """
    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann["bbox"] + [ann["category_id"]])
    cats = np.array([c["id"] for c in data["categories"]])
    parts = []
    for img in data["images"]:
        gt = np.array(by_image[img["id"]], dtype=np.float64).reshape(-1, 5)
        copies = gt[rng.integers(0, len(gt), min(per_image // 2, 2 * len(gt)))] if len(gt) else gt
        xywh = copies[:, :4] * rng.normal(1.0, 0.08, (len(copies), 4))
        label = np.where(rng.random(len(copies)) < 0.2, rng.choice(cats, len(copies)), copies[:, 4])
        n = per_image - len(copies)
        wh = rng.uniform(0.05, 0.5, (n, 2)) * [img["width"], img["height"]]
        xy = rng.random((n, 2)) * ([img["width"], img["height"]] - wh)
        xywh = np.concatenate([xywh, np.concatenate([xy, wh], axis=1)])
        label = np.concatenate([label, rng.choice(cats, n)])
        parts.append((np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), label))
    counts = [len(p[0]) for p in parts]
    return {
        "image_ids": np.array([img["id"] for img in data["images"]], dtype=np.int64),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "boxes": np.concatenate([p[0] for p in parts]),
        "scores": rng.random(sum(counts)),
        "category_ids": np.concatenate([p[1] for p in parts]).astype(np.int64),
    }

"""A deterministic synthetic COCO-format detection dataset: textured shapes on cluttered ground.

Five object classes, told apart by shape first (colour is a strong but unreliable hint):
circle, square, triangle, cross, ring. Their frequencies are imbalanced (36/26/18/12/8 %), box
sides are log-uniform between `min_object_size` and `max_object_size` pixels (at the default
256 px images half of the objects are under ~28 px, the smallest 8 px), objects may overlap
(IoU up to 0.35, later ones occlude earlier ones; boxes are the whole shape) and run off the
border. Clutter that is not an object: elongated ellipses, line segments, hollow rectangles,
irregular polygons, half discs, some in the objects' colours. Background: a colour gradient,
smooth blotches and pixel noise; objects carry their own pixel noise.

The same (seed, image index) always gives the same image, so the json of a seed is
byte-identical from run to run and the first N images do not depend on how many are made.

Command line:  python -m drdet.data.datasets.synthetic --out DIR [--num-images 600] [--seed 0]
writes DIR/annotations.json and DIR/images/*.jpg; --image-size, --min/max-object-size,
--mean-objects and --mean-distractors make sets of other sizes and densities (e.g. a held-out
set that no setting was tuned on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from drdet.utils.errors import UserValueError

from ..registry import DATASET_TYPES, DatasetType, MalformedDatasetName, datasets_root
from .coco import COCODataset

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
CLASS_FREQUENCIES: tuple[float, ...] = (0.36, 0.26, 0.18, 0.12, 0.08)
# Typical colour (RGB) of each class; drawn with jitter, and at random with COLOUR_RANDOM_PROB.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (215, 55, 45),
    (45, 90, 215),
    (40, 175, 60),
    (230, 200, 40),
    (190, 60, 200),
)
COLOUR_RANDOM_PROB = 0.2
MAX_OVERLAP_IOU = 0.35
ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel shapes
_ONE = 1 << _SHIFT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Defaults: the `synthetic_train` set (seed 1 for `synthetic_val`)."""

    num_images: int = 600
    seed: int = 0
    image_size: int = 256
    min_object_size: int = 8
    max_object_size: int = 96
    mean_objects: float = 4.0
    mean_distractors: float = 5.0
    image_format: str = "jpg"

    def __post_init__(self):
        if self.num_images < 1 or self.image_size < 32:
            raise ValueError(f"need num_images >= 1 and image_size >= 32, got {self}")
        if not 4 <= self.min_object_size <= self.max_object_size <= self.image_size:
            raise ValueError(
                f"need 4 <= min_object_size <= max_object_size <= image_size, got {self}"
            )
        if self.mean_objects < 1 or self.mean_distractors < 0:
            raise ValueError(f"need mean_objects >= 1 and mean_distractors >= 0, got {self}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")

    @property
    def folder_name(self) -> str:
        """Folder name that identifies the content, e.g. '600x256px_seed0'."""
        extra = (
            ""
            if (
                self.min_object_size,
                self.max_object_size,
                self.mean_objects,
                self.mean_distractors,
                self.image_format,
            )
            == (8, 96, 4.0, 5.0, "jpg")
            else f"_{self.min_object_size}-{self.max_object_size}_{self.mean_objects:g}-"
            f"{self.mean_distractors:g}_{self.image_format}"
        )
        return f"{self.num_images}x{self.image_size}px_seed{self.seed}{extra}"


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _draw_shape(
    mask: np.ndarray, kind: str, cx: float, cy: float, size: float, angle: float
) -> None:
    """Fill `mask` (H, W) uint8 with 255 where shape `kind` of extent ~`size` px lies.

    (cx, cy) is in continuous coordinates (pixel i covers [i, i + 1]); cv2 puts pixel centres at
    integers, hence the half-pixel shift.
    """
    cx, cy = cx - 0.5, cy - 0.5
    centre = np.array([cx, cy])
    r = size / 2.0
    if kind == "circle":
        cv2.circle(
            mask, (int(cx * _ONE), int(cy * _ONE)), int(r * _ONE), 255, -1, cv2.LINE_8, _SHIFT
        )
    elif kind == "ring":
        cv2.circle(
            mask, (int(cx * _ONE), int(cy * _ONE)), int(r * _ONE), 255, -1, cv2.LINE_8, _SHIFT
        )
        inner = r * 0.62
        cv2.circle(
            mask, (int(cx * _ONE), int(cy * _ONE)), int(inner * _ONE), 0, -1, cv2.LINE_8, _SHIFT
        )
    elif kind == "square":
        half = r / (abs(np.cos(angle)) + abs(np.sin(angle)))  # fits the rotated square in `size`
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * half
        cv2.fillPoly(mask, [_pts(_rotate(corners, angle) + centre)], 255, cv2.LINE_8, _SHIFT)
    elif kind == "triangle":
        t = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) - np.pi / 2
        corners = np.stack([np.cos(t), np.sin(t)], 1) * r
        cv2.fillPoly(mask, [_pts(corners + centre)], 255, cv2.LINE_8, _SHIFT)
    elif kind == "cross":
        a, b = r, r * 0.32
        arm = np.array(
            [
                [-b, -a],
                [b, -a],
                [b, -b],
                [a, -b],
                [a, b],
                [b, b],
                [b, a],
                [-b, a],
                [-b, b],
                [-a, b],
                [-a, -b],
                [-b, -b],
            ]
        )
        cv2.fillPoly(mask, [_pts(_rotate(arm, angle) + centre)], 255, cv2.LINE_8, _SHIFT)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def _fill_ellipse(mask: np.ndarray, cx: float, cy: float, axes, angle: float, end: int) -> None:
    """Fill the ellipse centred on (cx, cy) pixels with fixed-point `axes`, rotated by `angle`
    radians, from 0 to `end` degrees (360: whole, 180: half)."""
    centre = (int(cx * _ONE), int(cy * _ONE))
    cv2.ellipse(mask, centre, axes, float(np.degrees(angle)), 0, end, 255, -1, cv2.LINE_8, _SHIFT)


def _draw_distractor(mask: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Fill `mask` with one clutter shape that is none of the object classes."""
    cx, cy = rng.uniform(0, size, 2)
    extent = size * np.exp(rng.uniform(np.log(0.03), np.log(0.35)))
    angle = rng.uniform(0, np.pi)
    kind = rng.integers(5)
    if kind == 0:  # elongated ellipse
        axes = (int(extent / 2 * _ONE), int(extent / 2 * rng.uniform(0.12, 0.35) * _ONE))
        _fill_ellipse(mask, cx, cy, axes, angle, 360)
    elif kind == 1:  # line segment
        d = _rotate(np.array([[extent / 2, 0.0]]), angle)[0]
        p, q = np.array([cx, cy]) - d, np.array([cx, cy]) + d
        cv2.line(
            mask,
            tuple(int(v) for v in p * _ONE),
            tuple(int(v) for v in q * _ONE),
            255,
            int(rng.integers(1, 4)),
            cv2.LINE_8,
            _SHIFT,
        )
    elif kind == 2:  # hollow rectangle
        half = np.array([extent / 2, extent / 2 * rng.uniform(0.5, 1.0)])
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        cv2.polylines(
            mask,
            [_pts(_rotate(corners, angle) + [cx, cy])],
            True,
            255,
            int(rng.integers(1, 3)),
            cv2.LINE_8,
            _SHIFT,
        )
    elif kind == 3:  # irregular polygon
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = extent / 2 * rng.uniform(0.3, 1.0, n)
        cv2.fillPoly(
            mask,
            [_pts(np.stack([np.cos(t) * rad + cx, np.sin(t) * rad + cy], 1))],
            255,
            cv2.LINE_8,
            _SHIFT,
        )
    else:  # half disc
        _fill_ellipse(mask, cx, cy, (int(extent / 2 * _ONE),) * 2, angle, 180)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 RGB: gradient + smooth blotches + pixel noise."""
    base = rng.uniform(60, 190, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    direction = rng.normal(size=2)
    ramp = (xx * direction[0] + yy * direction[1])[..., None] * rng.uniform(-50, 50, 3)
    blotch = cv2.resize(
        rng.normal(0, 25, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    noise = rng.normal(0, 10, (size, size, 3))
    return (base + ramp + blotch + noise).astype(np.float32)


def _jittered_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    if rng.random() < COLOUR_RANDOM_PROB:
        return rng.uniform(20, 235, 3)
    return np.asarray(CLASS_COLOURS[label], dtype=np.float64) + rng.uniform(-35, 35, 3)


def _paint(
    canvas: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    rng: np.random.Generator,
    noise_std: float,
) -> None:
    sel = mask > 0
    canvas[sel] = colour + rng.normal(0, noise_std, (int(sel.sum()), 3))


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def generate_image(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, list[dict]]:
    """Image `index` of `spec`: (H, W, 3) uint8 RGB and its objects
    [{"category_id": 1..5, "bbox": [x, y, w, h] ints, "area": mask pixels}]."""
    rng = np.random.default_rng([spec.seed, index])
    size = spec.image_size
    canvas = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.poisson(spec.mean_distractors))):
        mask[:] = 0
        _draw_distractor(mask, rng, size)
        colour = (
            _jittered_colour(rng, int(rng.integers(len(CLASSES))))
            if rng.random() < 0.5
            else rng.uniform(20, 235, 3)
        )
        _paint(canvas, mask, colour, rng, 12.0)

    objects, boxes = [], np.zeros((0, 4))
    n_objects = min(1 + int(rng.poisson(spec.mean_objects - 1)), 15)
    lo, hi = np.log(spec.min_object_size), np.log(spec.max_object_size)
    for _ in range(n_objects):
        label = int(rng.choice(len(CLASSES), p=CLASS_FREQUENCIES))
        for _attempt in range(20):
            extent = float(np.exp(rng.uniform(lo, hi)))
            margin = 0.3 * extent  # up to 0.2 * extent of the shape may lie past the border
            cx, cy = rng.uniform(margin, size - margin, 2)
            angle = float(rng.uniform(0, 2 * np.pi))
            mask[:] = 0
            _draw_shape(mask, CLASSES[label], cx, cy, extent, angle)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
            if min(box[2] - box[0], box[3] - box[1]) < 4:
                continue  # cut off by the border to a sliver
            if (_box_iou(box, boxes) > MAX_OVERLAP_IOU).any():
                continue
            _paint(canvas, mask, _jittered_colour(rng, label), rng, 14.0)
            boxes = np.vstack([boxes, box])
            x1, y1, x2, y2 = (int(v) for v in box)
            objects.append(
                {"category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(len(xs))}
            )
            break
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def write_dataset(spec: SyntheticSpec, out_dir: str) -> None:
    """Write `spec` as out_dir/annotations.json + out_dir/images/ (out_dir must not exist yet)."""
    os.makedirs(os.path.join(out_dir, IMAGE_DIR))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(spec.num_images):
        pixels, objects = generate_image(spec, index)
        file_name = f"{index:06d}.{spec.image_format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if spec.image_format == "jpg" else []
        path = os.path.join(out_dir, IMAGE_DIR, file_name)
        if not cv2.imwrite(path, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), params):
            raise RuntimeError(f"could not write {path}")
        images.append(
            {
                "id": index + 1,
                "file_name": file_name,
                "height": spec.image_size,
                "width": spec.image_size,
            }
        )
        for obj in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0, **obj}
            )
    data = {
        "info": {"description": "drdet synthetic shapes", "generator": asdict(spec)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)
        ],
    }
    with open(os.path.join(out_dir, ANNOTATION_FILE), "w") as f:
        json.dump(data, f, sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """Advisory inter-process lock (POSIX flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holds(spec: SyntheticSpec, out_dir: str, replace: bool) -> bool:
    """Whether `out_dir` holds `spec`'s dataset (the generator settings its json records). One
    made with other settings: False with `replace` (it is then replaced), else an error."""
    path = os.path.join(out_dir, ANNOTATION_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        recorded = json.load(f).get("info", {}).get("generator")
    if recorded == json.loads(json.dumps(asdict(spec))):
        return True
    if replace:
        return False
    raise UserValueError(
        f"{out_dir} holds a synthetic dataset made with other settings "
        f"({recorded}, wanted {asdict(spec)}): remove it or use another folder"
    )


def ensure_dataset(spec: SyntheticSpec, out_dir: str, replace: bool = False) -> str:
    """Make sure `out_dir` holds `spec`'s dataset, generating it if missing; returns out_dir.
    One made with other settings (another seed or size) is replaced when `replace` (the
    command line's --out), else an error.

    Atomic: the data are written to a temporary sibling folder that is renamed to `out_dir` only
    when complete, so an interrupted run leaves no half-written `out_dir`. Concurrent callers
    (several ranks or jobs) serialise on a lock file beside it; if the lock is unavailable the
    rename still guarantees that exactly one complete copy wins.
    """
    out_dir = os.path.abspath(out_dir)
    if _holds(spec, out_dir, replace):
        return out_dir
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(out_dir + ".lock"):
        if _holds(spec, out_dir, replace):
            return out_dir  # another process made it while we waited
        if os.path.exists(out_dir) and not os.path.isfile(os.path.join(out_dir, ANNOTATION_FILE)):
            raise RuntimeError(
                f"{out_dir} exists but has no {ANNOTATION_FILE}: not made by this "
                "generator; remove it to regenerate"
            )
        logger.info("generating the synthetic dataset (%d images) in %s", spec.num_images, out_dir)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
        try:
            write_dataset(spec, os.path.join(tmp, "data"))
            if os.path.exists(out_dir):  # made with other settings, replaced (`replace`)
                logger.info("replacing %s, made with other settings", out_dir)
                os.rename(out_dir, os.path.join(tmp, "old"))
            try:
                os.rename(os.path.join(tmp, "data"), out_dir)
            except OSError:
                if not os.path.isfile(os.path.join(out_dir, ANNOTATION_FILE)):
                    raise  # lost no race: a real error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (kept if it already holds this dataset; one made with "
        "other settings is replaced)",
    )
    defaults = SyntheticSpec()
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--min-object-size", type=int, default=defaults.min_object_size)
    parser.add_argument("--max-object-size", type=int, default=defaults.max_object_size)
    parser.add_argument(
        "--mean-objects", type=float, default=defaults.mean_objects, help="objects per image"
    )
    parser.add_argument(
        "--mean-distractors",
        type=float,
        default=defaults.mean_distractors,
        help="clutter shapes per image",
    )
    parser.add_argument("--format", choices=("jpg", "png"), default=defaults.image_format)
    args = parser.parse_args(argv)
    keys = (
        "num_images",
        "seed",
        "image_size",
        "min_object_size",
        "max_object_size",
        "mean_objects",
        "mean_distractors",
    )
    spec = SyntheticSpec(**{key: getattr(args, key) for key in keys}, image_format=args.format)
    out = ensure_dataset(spec, args.out, replace=True)
    print(f"synthetic dataset ({spec.num_images} images, seed {spec.seed}) in {out}")


# ---- the "synthetic" dataset type (drdet/data/registry.py) ----

# name -> SyntheticSpec arguments (generated on first use under <root>/synthetic/<folder_name>)
SYNTHETIC_DATASETS: dict[str, dict[str, Any]] = {
    "synthetic_train": {"num_images": 600, "seed": 0},
    "synthetic_val": {"num_images": 100, "seed": 1},
}


def _synthetic_from_entry(
    name: str, spec_args: dict[str, Any], root: str, transforms: Callable | None, is_train: bool
) -> COCODataset:
    spec = SyntheticSpec(**spec_args)
    folder = ensure_dataset(spec, os.path.join(root, "synthetic", spec.folder_name))
    return COCODataset(
        os.path.join(folder, ANNOTATION_FILE),
        os.path.join(folder, IMAGE_DIR),
        remove_images_without_annotations=is_train,
        transforms=transforms,
        name=name,
    )


def _synthetic_from_parts(
    name: str, parts: list[str], transforms: Callable | None, is_train: bool
) -> COCODataset:
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise MalformedDatasetName(name)
    sizes = dict(zip(("num_images", "seed", "image_size"), map(int, parts)))
    return _synthetic_from_entry(name, sizes, datasets_root(), transforms, is_train)


if __name__ != "__main__":  # run as a script, this file is a second copy of the module:
    # the package's copy (drdet.data.datasets.synthetic) is the one that registers the type
    DATASET_TYPES.register(
        "synthetic",
        DatasetType(
            form="synthetic:<num images>:<seed>[:<size px>]",
            from_parts=_synthetic_from_parts,
            max_parts=3,
            names=SYNTHETIC_DATASETS,
            from_entry=_synthetic_from_entry,
        ),
    )

if __name__ == "__main__":
    main()

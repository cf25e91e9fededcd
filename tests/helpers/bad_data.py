"""Small COCO sets written into a temporary folder, and a minimal config for the real data loader
over them: the building blocks of the bad-data and user-error tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from yacs.config import CfgNode as CN

from .data_config import input_node, loader_config

W, H = 64, 48  # size of the images the helpers write (w x h)


def rgb_pixels(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 random pixels."""
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def jpeg_bytes(w: int = W, h: int = H, seed: int = 0, **save_args) -> bytes:
    """A w x h JPEG file of rgb_pixels(w, h, seed); save_args go to PIL's save."""
    buf = io.BytesIO()
    Image.fromarray(rgb_pixels(w, h, seed)).save(buf, "JPEG", **save_args)
    return buf.getvalue()


def write_set(
    root: Path,
    files: dict[str, bytes | Image.Image | None],
    annotations: list[dict] | None = None,
    sizes: dict[int, tuple[int, int]] | None = None,
) -> tuple[str, str]:
    """A COCO set in `root`: one image per entry of `files` ({file name: bytes or PIL image}),
    ids 1, 2, ... in that order, each W x H in the json unless `sizes` {id: (w, h)} says
    otherwise, one box per image unless `annotations` is given. Returns (json path, folder)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for image_id, (name, content) in enumerate(files.items(), start=1):
        if isinstance(content, Image.Image):
            content.save(img_dir / name)
        elif content is not None:  # None: the file is missing
            (img_dir / name).write_bytes(content)
        w, h = (sizes or {}).get(image_id, (W, H))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    if annotations is None:
        annotations = [
            {"id": 100 + i["id"], "image_id": i["id"], "category_id": 1, "bbox": [4, 4, 20, 16]}
            for i in images
        ]
    ann = root / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    return str(ann), str(img_dir)


def good_files(n: int, ext: str = "png") -> dict[str, Image.Image]:
    """{"1.<ext>": image, ..., "<n>.<ext>": image}: n distinct valid W x H RGB images."""
    return {f"{i}.{ext}": Image.fromarray(rgb_pixels(seed=i)) for i in range(1, n + 1)}


def loader_cfg(
    ann: str, img_dir: str, workers: int = 0, max_bad: int = 0, max_iter: int = 4, ims: int = 2
) -> CN:
    """The config keys build_data_loader reads, on the CPU, for the set (ann, img_dir) as both
    the training and the test set; images resized to 48 x 64 at most."""
    return loader_config(
        f"coco:{ann}:{img_dir}",
        input_node((48,), 64, 48, 64),
        ims,
        ims,
        max_iter,
        NUM_WORKERS=workers,
        MAX_BAD_IMAGES=max_bad,
    )

"""Dataset names -> dataset objects.

Registered names are resolved under the datasets root, the environment variable DRDET_DATASETS
(default ./datasets; layout in datasets/README.md). Besides them, three name forms need no
registration, so own data work from a yaml or the command line alone:

    coco:<annotation json>:<image folder>      e.g. coco:/data/mine/train.json:/data/mine/images
    voc:<VOC20xx folder>:<split>               e.g. voc:/data/VOCdevkit/VOC2007:test
    synthetic:<num images>:<seed>[:<size px>]  e.g. synthetic:200:5

(the json path must not contain ':'; the image folder may). Relative paths are taken from the
current directory.
"""
from __future__ import annotations

import os
from typing import Callable

from .datasets.coco import COCODataset
from .datasets.voc import VOCDataset

ENV_ROOT = "DRDET_DATASETS"
DEFAULT_ROOT = "./datasets"

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
# name -> (VOC folder relative to the root, split)
VOC_DATASETS: dict[str, tuple[str, str]] = {
    "voc_2007_trainval": ("voc/VOC2007", "trainval"),
    "voc_2007_test": ("voc/VOC2007", "test"),
    "voc_2012_trainval": ("voc/VOC2012", "trainval"),
}
# name -> SyntheticSpec arguments (generated on first use under <root>/synthetic/<folder_name>)
SYNTHETIC_DATASETS: dict[str, dict[str, int]] = {
    "synthetic_train": {"num_images": 600, "seed": 0},
    "synthetic_val": {"num_images": 100, "seed": 1},
}


class UnknownDatasetError(KeyError):
    """A dataset name that is neither registered nor of a coco:/voc:/synthetic: form."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def datasets_root() -> str:
    """The datasets root: $DRDET_DATASETS, or ./datasets."""
    return os.environ.get(ENV_ROOT, DEFAULT_ROOT)


def known_names() -> list[str]:
    return sorted([*COCO_DATASETS, *VOC_DATASETS, *SYNTHETIC_DATASETS])


def _require(path: str, name: str, what: str, from_root: bool) -> str:
    if os.path.exists(path):
        return path
    hint = (f"; registered datasets live under {ENV_ROOT}={datasets_root()!r} "
            f"(see datasets/README.md for the layout)" if from_root else "")
    raise FileNotFoundError(f"dataset {name!r}: {what} {path!r} not found{hint}")


def _synthetic(name: str, spec_args: dict[str, int], transforms, is_train: bool) -> COCODataset:
    # Imported here so `python -m drdet.data.datasets.synthetic` does not find itself imported.
    from .datasets.synthetic import SyntheticSpec, ensure_dataset

    spec = SyntheticSpec(**spec_args)
    folder = ensure_dataset(spec, os.path.join(datasets_root(), "synthetic", spec.folder_name))
    return COCODataset(os.path.join(folder, "annotations.json"), os.path.join(folder, "images"),
                       remove_images_without_annotations=is_train, transforms=transforms, name=name)


def _parse_special(name: str) -> tuple[str, list[str]] | None:
    kind, sep, rest = name.partition(":")
    if not sep or kind not in ("coco", "voc", "synthetic"):
        return None
    parts = rest.split(":", 1) if kind != "synthetic" else rest.split(":")
    return kind, parts


def get_dataset(name: str, transforms: Callable | None, is_train: bool):
    """Build the dataset called `name` (a registered name or a coco:/voc:/synthetic: form).

    `is_train` selects training behaviour: images without usable boxes are skipped and VOC's
    difficult objects are left out of the targets. Raises UnknownDatasetError (a KeyError)
    listing the known names for an unknown name and FileNotFoundError naming the missing path (and DRDET_DATASETS).
    """
    root = datasets_root()
    if name in COCO_DATASETS:
        img_dir, ann = (os.path.join(root, p) for p in COCO_DATASETS[name])
        _require(ann, name, "annotation file", True)
        _require(img_dir, name, "image folder", True)
        return COCODataset(ann, img_dir, remove_images_without_annotations=is_train,
                           transforms=transforms, name=name)
    if name in VOC_DATASETS:
        folder, split = VOC_DATASETS[name]
        folder = _require(os.path.join(root, folder), name, "VOC folder", True)
        _require(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), name, "image list", True)
        return VOCDataset(folder, split, is_train=is_train, transforms=transforms, name=name)
    if name in SYNTHETIC_DATASETS:
        return _synthetic(name, SYNTHETIC_DATASETS[name], transforms, is_train)
    special = _parse_special(name)
    if special is not None:
        kind, parts = special
        if kind == "coco" and len(parts) == 2 and all(parts):
            ann, img_dir = parts
            _require(ann, name, "annotation file", False)
            _require(img_dir, name, "image folder", False)
            return COCODataset(ann, img_dir, remove_images_without_annotations=is_train,
                               transforms=transforms, name=name)
        if kind == "voc" and len(parts) == 2 and all(parts):
            folder, split = parts
            _require(folder, name, "VOC folder", False)
            _require(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), name,
                     "image list", False)
            return VOCDataset(folder, split, is_train=is_train, transforms=transforms, name=name)
        if kind == "synthetic" and len(parts) in (2, 3) and all(p.isdigit() for p in parts):
            sizes = dict(zip(("num_images", "seed", "image_size"), map(int, parts)))
            return _synthetic(name, sizes, transforms, is_train)
        raise ValueError(f"malformed dataset name {name!r}; expected coco:<json>:<image folder>, "
                         "voc:<VOC folder>:<split> or synthetic:<num images>:<seed>[:<size px>]")
    raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(known_names())}; or "
                   "coco:<json>:<image folder>, voc:<VOC folder>:<split>, "
                   "synthetic:<num images>:<seed>[:<size px>]")

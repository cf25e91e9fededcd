"""The classes a checkpoint was trained on, recorded in it, and their checks against a config
and a dataset.

train_net stores ``{"num_classes": K, "names": [name of label 1, ..., name of label K]}`` (the
training set's categories in contiguous order) under the checkpoint's "classes" key. K counts
the object classes only; MODEL.NUM_CLASSES counts the background too (K + 1).

MODEL.RESET_CLASSIFIER (declared here) fine-tunes a checkpoint on other classes: train_net,
starting from MODEL.WEIGHT, loads every tensor but the classifier's last layer
(:func:`classifier_keys`), which keeps the initialisation the head gives it (the loss's prior).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from drdet.config import add_config_node, register_config_check
from drdet.utils.checks import require
from drdet.utils.errors import UserValueError

CLASSES_KEY = "classes"
NUM_CLASSES_KEY = "MODEL.NUM_CLASSES"
RESET_KEY = "MODEL.RESET_CLASSIFIER"
RESET_HINT = (
    f"to fine-tune it on other classes (train_net), keep {NUM_CLASSES_KEY} for your data and "
    f"set {RESET_KEY} True: every tensor but the classifier's last layer is loaded"
)
CONVERTED_HINT = (
    "a torchvision model converted by tools/convert_checkpoint.py keeps torchvision's column 0 "
    "(its background) as label 1 unless converted with --drop-background-column (or "
    "--coco-category-ids for its COCO models, with configs/torchvision/)"
)

add_config_node(RESET_KEY, False)


def check_reset_cfg(cfg) -> None:
    """MODEL.RESET_CLASSIFIER needs MODEL.WEIGHT (the checkpoint to fine-tune)."""
    require(
        not cfg.MODEL.RESET_CLASSIFIER or bool(cfg.MODEL.WEIGHT),
        RESET_KEY,
        cfg.MODEL.RESET_CLASSIFIER,
        "it re-initialises the classifier of MODEL.WEIGHT, which is empty: set MODEL.WEIGHT "
        "to the checkpoint to fine-tune",
    )


register_config_check(RESET_KEY, check_reset_cfg)

logger = logging.getLogger(__name__)


def cfg_num_classes(cfg) -> tuple[str, int]:
    """(config key, number of object classes) of the detector ``cfg`` builds. The key counts
    the background, so the number is its value - 1. The one place that knows the key."""
    return NUM_CLASSES_KEY, int(cfg.MODEL.NUM_CLASSES) - 1


def dataset_classes(dataset) -> tuple[str, list[str]]:
    """(name, category names in label order) of a dataset (a ConcatDataset: its first part;
    build_dataset checks that the parts agree)."""
    first = getattr(dataset, "datasets", [dataset])[0]
    return getattr(first, "name", "?"), list(first.class_names)


def classes_record(dataset) -> dict[str, Any]:
    """What train_net saves under the checkpoint's "classes" key for its training set."""
    _, names = dataset_classes(dataset)
    return {"num_classes": len(names), "names": names}


def state_num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """Object classes of a RetinaNet state dict (classification columns per anchor), or None
    when it has no head."""
    cls_bias, box_bias = state.get("head.cls_logits.bias"), state.get("head.bbox_pred.bias")
    if cls_bias is None or box_bias is None or box_bias.numel() < 4:
        return None
    return cls_bias.numel() // (box_bias.numel() // 4)


def classifier_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the detector's final classification layer, found through its head: the
    first of the class tower's predictors (``DenseHead.predictors``), else ``head.cls_logits``.
    [] when the detector has no such head."""
    head = getattr(model, "head", None)
    if hasattr(head, "predictors"):
        layer = head.predictors()[0][0]  # type: ignore[union-attr]
    else:
        layer = getattr(head, "cls_logits", None)
    for name, module in model.named_modules():
        if layer is not None and module is layer:
            return [f"{name}.{key}" for key in module.state_dict()]
    return []


def _describe(num: int, names: Sequence[str] | None) -> str:
    listed = f" [{', '.join(map(str, names))}]" if names else ""
    return f"{num} classes{listed}"


def check_classes(
    record: Mapping[str, Any] | None,
    path: str,
    cfg=None,
    dataset=None,
    log: logging.Logger | None = None,
) -> None:
    """Check the classes `record` of the checkpoint at `path` against the config (its class
    count) and, when given, a dataset (its category count and names, in label order). Raises
    UserValueError naming both sides; warns when the checkpoint records no classes (saved by an
    older drdet, or converted)."""
    log = log or logger
    if not record:
        if cfg is not None and dataset is not None:
            check_unrecorded_classes(path, cfg, dataset)
        log.warning(
            "%s records no classes (an older or converted checkpoint): its class names are "
            "not checked against the dataset's",
            path,
        )
        return
    num, names = int(record["num_classes"]), list(record.get("names") or [])
    trained = f"checkpoint {path} was trained on {_describe(num, names)}"
    if cfg is not None:
        key, expected = cfg_num_classes(cfg)
        if expected != num:
            raise UserValueError(
                f"{trained}; config {key} is {expected + 1} ({expected} classes "
                f"+ background): set it to {num + 1} to use its classes, or, {RESET_HINT}"
            )
    if dataset is not None:
        name, categories = dataset_classes(dataset)
        if len(categories) != num or (names and categories != names):
            raise UserValueError(
                f"{trained}; dataset {name} has {_describe(len(categories), categories)}"
            )


def check_unrecorded_classes(path: str, cfg, dataset) -> None:
    """For a checkpoint that records no classes, the config's class count stands for the
    checkpoint's: it must be the dataset's (else every label would be off)."""
    key, expected = cfg_num_classes(cfg)
    name, categories = dataset_classes(dataset)
    if expected != len(categories):
        raise UserValueError(
            f"checkpoint {path} records no classes, so config {key} {expected + 1} stands for "
            f"its {expected} classes, but dataset {name} has "
            f"{_describe(len(categories), categories)}: the labels would not match. Set {key} "
            f"to {len(categories) + 1} if its classes are the dataset's, in the same order; "
            f"{CONVERTED_HINT}"
        )


def check_state_classes(
    state: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    path: str,
    record: Mapping[str, Any] | None = None,
) -> None:
    """Raise UserValueError, in words, when the checkpoint's state dict predicts another number
    of classes than the model (instead of a bare tensor shape mismatch)."""
    num, own = state_num_classes(state), state_num_classes(model_state)
    if num is None or own is None or num == own:
        return
    names = (record or {}).get("names")
    raise UserValueError(
        f"checkpoint {path} has {_describe(num, names)}, config "
        f"{NUM_CLASSES_KEY} is {own + 1} ({own} classes + background): set it "
        f"to {num + 1} to use its classes, or, {RESET_HINT}"
    )

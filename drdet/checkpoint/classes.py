"""The classes a checkpoint was trained on, recorded in it, and their checks against a config
and a dataset.

train_net stores ``{"num_classes": K, "names": [name of label 1, ..., name of label K]}`` (the
training set's categories in contiguous order) under the checkpoint's "classes" key. K counts
the object classes only; MODEL.NUM_CLASSES counts the background too (K + 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from drdet.utils.errors import UserValueError

CLASSES_KEY = "classes"
NUM_CLASSES_KEY = "MODEL.NUM_CLASSES"

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
        log.warning(
            "%s records no classes (an older or converted checkpoint): its classes are "
            "not checked against the config and the dataset",
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
                f"+ background): set it to {num + 1}"
            )
    if dataset is not None:
        name, categories = dataset_classes(dataset)
        if len(categories) != num or (names and categories != names):
            raise UserValueError(
                f"{trained}; dataset {name} has {_describe(len(categories), categories)}"
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
        f"to {num + 1} to load this checkpoint"
    )

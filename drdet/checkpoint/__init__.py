"""Checkpoints and weights: atomic saves, resume, safe loading (checkpointer.py) and the
conversion of foreign weights to drdet's parameter names (weights.py).

Sits above drdet.modeling (the ResNet conversion is the backbone's own) and below drdet.engine."""

from .checkpointer import (
    LAST_CHECKPOINT,
    Checkpointer,
    check_weights_only_safe,
    get_rng_state,
    load_checkpoint_file,
    load_model_state,
    set_rng_state,
    unwrap_model,
)
from .classes import CLASSES_KEY, cfg_num_classes, check_classes, classes_record
from .weights import detect_format, to_drdet_state

__all__ = [
    "CLASSES_KEY",
    "cfg_num_classes",
    "check_classes",
    "classes_record",
    "LAST_CHECKPOINT",
    "Checkpointer",
    "check_weights_only_safe",
    "detect_format",
    "get_rng_state",
    "load_checkpoint_file",
    "load_model_state",
    "set_rng_state",
    "to_drdet_state",
    "unwrap_model",
]

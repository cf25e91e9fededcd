"""The config keys every dense detector shares: MODEL.NUM_CLASSES (declared with the framework's
keys, drdet/config/defaults.py) and its check."""

from __future__ import annotations

from drdet.config import register_config_check
from drdet.utils.checks import require


def num_foreground_classes(cfg) -> int:
    """C, the classes a dense head predicts: MODEL.NUM_CLASSES counts the background too."""
    return int(cfg.MODEL.NUM_CLASSES) - 1


def check_num_classes_cfg(cfg) -> None:
    n = cfg.MODEL.NUM_CLASSES
    require(n >= 2, "MODEL.NUM_CLASSES", n, "counts the background, so it must be >= 2")


register_config_check("MODEL.NUM_CLASSES", check_num_classes_cfg)

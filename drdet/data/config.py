"""The checks of the INPUT and DATALOADER keys (declared with the framework's keys,
drdet/config/defaults.py), which the transforms and the loaders read."""

from __future__ import annotations

from drdet.config import register_config_check
from drdet.utils.checks import require


def check_input_cfg(cfg) -> None:
    i = cfg.INPUT
    require(
        len(i.MIN_SIZE_TRAIN) >= 1 and all(s > 0 for s in i.MIN_SIZE_TRAIN),
        "INPUT.MIN_SIZE_TRAIN",
        i.MIN_SIZE_TRAIN,
        "must list positive sizes",
    )
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        require(len(i[key]) == 3, f"INPUT.{key}", i[key], "needs 3 values")
    require(all(s > 0 for s in i.PIXEL_STD), "INPUT.PIXEL_STD", i.PIXEL_STD, "must be positive")
    require(
        0.0 <= i.HORIZONTAL_FLIP_PROB_TRAIN <= 1.0,
        "INPUT.HORIZONTAL_FLIP_PROB_TRAIN",
        i.HORIZONTAL_FLIP_PROB_TRAIN,
        "must be in [0, 1]",
    )


def check_dataloader_cfg(cfg) -> None:
    d = cfg.DATALOADER
    require(
        d.SIZE_DIVISIBILITY >= 0,
        "DATALOADER.SIZE_DIVISIBILITY",
        d.SIZE_DIVISIBILITY,
        "must be >= 0 (0: no padding)",
    )
    require(
        d.MAX_BAD_IMAGES >= 0,
        "DATALOADER.MAX_BAD_IMAGES",
        d.MAX_BAD_IMAGES,
        "must be >= 0 (0: stop at the first unreadable image)",
    )


register_config_check("INPUT", check_input_cfg)
register_config_check("DATALOADER", check_dataloader_cfg)

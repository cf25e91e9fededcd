"""The config node of drdet: yacs' CfgNode with `_BASE_` inheritance, strict typed merging whose
errors name the key, and a validation step for the enumerated and ranged values.

Where each fact lives: the allowed values of an enumerated key are defined once, by the module
that implements them (``drdet.layers.misc.NORMS``, ``drdet.solver.lr_scheduler.WARMUP_METHODS``,
...), and the DR loss's hyperparameters are validated once, by ``drdet.layers.DRLossParams``.
This module does not import them at import time (config sits below the model in the import
order: the model's modules import config, never the other way round); :func:`validate_cfg`
imports them when it runs, as it does the registries (:func:`choices`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsCfgNode

from drdet.utils.checks import require

from .loss_setup import setup_values

BASE_KEY = "_BASE_"

logger = logging.getLogger(__name__)

# Keys drdet no longer reads, and why. A yaml file or override that sets one still loads: the
# value is ignored with a warning.
REMOVED_KEYS: dict[str, str] = {
    "MODEL.RETINANET_ON": "the detector is MODEL.META_ARCHITECTURE",
    "MODEL.RETINANET.STRADDLE_THRESH": "anchors crossing the image border are always kept, as "
    "in maskrcnn-benchmark's RetinaNet",
    "TEST.EXPECTED_RESULTS": "drdet does not compare results against expected values",
}


# SPEED.AMP_DTYPE: the autocast dtypes drdet.engine.speed.amp_dtype maps to a torch dtype.
AMP_DTYPES = ("float16", "bfloat16", "auto")


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the enumerated keys, by full key name, from the modules that implement
    them (imported here, not at import time; see the module docstring). MODEL.DR_LOSS.SMOOTHING
    and PAIRING are checked with the other DR loss parameters by DRLossParams."""
    from drdet.layers.misc import NORMS
    from drdet.modeling.anchor_generator import ANCHOR_CONVENTIONS
    from drdet.modeling.fcos.loss import REG_LOSSES
    from drdet.modeling.losses.dr import GROUPINGS
    from drdet.solver.build import LR_SCHEDULERS
    from drdet.solver.lr_scheduler import WARMUP_METHODS

    return {
        "MODEL.RESNETS.NORM": NORMS,
        "MODEL.RETINANET.ANCHOR_CONVENTION": ANCHOR_CONVENTIONS,
        "MODEL.DR_LOSS.GROUPING": GROUPINGS,
        "MODEL.FCOS.REG_LOSS": REG_LOSSES,
        "SOLVER.WARMUP_METHOD": WARMUP_METHODS,
        "SOLVER.LR_SCHEDULER": LR_SCHEDULERS,
        "SPEED.AMP_DTYPE": AMP_DTYPES,
    }


class CfgNode(_YacsCfgNode):
    """yacs CfgNode whose merges are strict and name the offending key.

    - ``merge_from_file(path)`` reads yaml with ``yaml.safe_load`` and follows
      ``_BASE_: other.yaml`` (relative to the including file), merging the base first, recursively.
    - An unknown key raises ``KeyError("Unknown config key: MODEL.FOO")``; a value of the wrong
      type raises ``ValueError`` naming the key and both types. Allowed conversions: list <-> tuple
      and int -> float (so ``L: 6`` is accepted for a float key); bool is never taken for a number.
    - Call :func:`validate_cfg` (or ``cfg.validate()``) before using a merged config; it checks
      the enumerated and ranged values and, with ``freeze=True``, freezes the node.
    """

    def merge_from_file(self, cfg_filename: str) -> None:
        """The yaml file (and its _BASE_ chain) over the setup of the loss it names."""
        self.merge_from_file_and_list(cfg_filename, ())

    def merge_from_file_and_list(self, cfg_filename: str, opts: Sequence[Any]) -> None:
        """The loss's setup, then the yaml file (with _BASE_), then the KEY VALUE ``opts``: the
        loss that ``opts`` or the file name (``MODEL.RETINANET.LOSS_TYPE``, ...) brings its setup
        (drdet.modeling.losses.setup) for every key neither of them sets."""
        data = load_yaml_with_base(cfg_filename)
        opts = list(opts)
        if len(opts) % 2 != 0:
            raise ValueError(
                f"config overrides must be KEY VALUE pairs; got an odd number ({len(opts)})"
            )
        for full_key, value in setup_values(data, opts, self.MODEL.META_ARCHITECTURE).items():
            self.merge_from_list([full_key, value])
        _merge_dict(data, self, [])
        self.merge_from_list(opts)

    def merge_from_other_cfg(self, cfg_other: _YacsCfgNode) -> None:
        _merge_dict(cfg_other, self, [])

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``["MODEL.RETINANET.LOSS_TYPE", "DR", "SOLVER.BASE_LR", "0.005", ...]``."""
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"config overrides must be KEY VALUE pairs; got an odd number ({len(cfg_list)})"
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if _is_removed(full_key):
                continue
            node = self
            parts = full_key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, _YacsCfgNode) or part not in node:
                    raise KeyError(f"Unknown config key: {'.'.join(parts[: i + 1])}")
                if i < len(parts) - 1:
                    node = node[part]
            if isinstance(node[parts[-1]], _YacsCfgNode):
                raise ValueError(f"config key {full_key} is a group of keys, not a value")
            value = raw
            if isinstance(raw, str) and not isinstance(node[parts[-1]], str):
                value = _YacsCfgNode._decode_cfg_value(raw)
            _set_checked(node, parts[-1], value, full_key)

    def validate(self, freeze: bool = True) -> CfgNode:
        validate_cfg(self, freeze=freeze)
        return self


def load_yaml_with_base(path: str) -> dict[str, Any]:
    """Read ``path`` with yaml.safe_load and resolve its ``_BASE_`` chain into one dict."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level, not {type(data)}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{BASE_KEY} in {path} must be a path string, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    merged = load_yaml_with_base(base_path)
    _update_dict(merged, data)
    return merged


def _update_dict(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update_dict(base[key], value)
        else:
            base[key] = value


def _merge_dict(src: dict[str, Any], dst: _YacsCfgNode, prefix: list[str]) -> None:
    for key, value in src.items():
        full_key = ".".join(prefix + [str(key)])
        if key not in dst and _is_removed(full_key):
            continue
        if key not in dst:
            raise KeyError(f"Unknown config key: {full_key}")
        if isinstance(dst[key], _YacsCfgNode):
            if not isinstance(value, dict):
                raise ValueError(
                    f"config key {full_key} is a group of keys; got a {type(value).__name__}"
                )
            _merge_dict(value, dst[key], prefix + [str(key)])
        else:
            if isinstance(value, dict):
                raise ValueError(f"config key {full_key} takes a value, not a group of keys")
            if isinstance(value, str) and not isinstance(dst[key], str):
                # yaml leaves "(800,)" a string: read it as a Python literal, as yacs does.
                value = _YacsCfgNode._decode_cfg_value(value)
            _set_checked(dst, key, value, full_key)


def _is_removed(full_key: str) -> bool:
    """True (after logging a warning) when ``full_key`` is one of REMOVED_KEYS."""
    if full_key not in REMOVED_KEYS:
        return False
    logger.warning("%s is no longer used and is ignored (%s)", full_key, REMOVED_KEYS[full_key])
    return True


def _set_checked(node: _YacsCfgNode, key: str, value: Any, full_key: str) -> None:
    node[key] = _coerce(value, node[key], full_key)


def _coerce(value: Any, original: Any, full_key: str) -> Any:
    """``value`` converted to the type of ``original``, or ValueError naming ``full_key``."""
    otype, vtype = type(original), type(value)
    if original is None or value is None or otype is vtype:
        return value
    if otype in (list, tuple) and vtype in (list, tuple):
        return otype(value)
    if otype is float and vtype is int:
        return float(value)
    raise ValueError(
        f"Type mismatch for config key {full_key}: expected {otype.__name__} "
        f"(default {original!r}), got {vtype.__name__} ({value!r})"
    )


def _get(cfg: _YacsCfgNode, full_key: str) -> Any:
    node = cfg
    for part in full_key.split("."):
        node = node[part]
    return node


def _check_registered_names(cfg: _YacsCfgNode) -> None:
    """Keys whose value names a registered component (drdet.utils.registry) must name one."""
    import drdet.modeling  # noqa: F401  (registers the built-in components)
    from drdet.utils.registry import registries

    for registry in registries():
        for full_key in registry.config_keys:
            value = _get(cfg, full_key)
            require(
                value in registry,
                full_key,
                value,
                f"must be a registered {registry.name}: one of {registry.names()}",
            )


def _check_dr_loss(cfg: _YacsCfgNode) -> None:
    """MODEL.DR_LOSS through DRLossParams' own validation, its error naming the config key."""
    from drdet.layers.dr_loss import DRLossParams, InvalidDRLossParam

    try:
        DRLossParams.from_cfg(cfg)
    except InvalidDRLossParam as err:
        require(False, err.config_key, err.value, err.what)


def _check_backbone(cfg: _YacsCfgNode) -> None:
    from drdet.modeling.backbone.build import check_resnet_cfg

    check_resnet_cfg(cfg)


def validate_cfg(cfg: _YacsCfgNode, freeze: bool = True) -> _YacsCfgNode:
    """Check enumerated and ranged values of ``cfg``; raise ValueError naming the key.

    Returns ``cfg``, frozen when ``freeze`` is True.
    """
    for full_key, allowed in choices().items():
        value = _get(cfg, full_key)
        require(value in allowed, full_key, value, f"must be one of {list(allowed)}")
    _check_registered_names(cfg)
    _check_dr_loss(cfg)
    _check_backbone(cfg)

    m = cfg.MODEL
    require(
        0 <= m.BACKBONE.FREEZE_CONV_BODY_AT <= 5,
        "MODEL.BACKBONE.FREEZE_CONV_BODY_AT",
        m.BACKBONE.FREEZE_CONV_BODY_AT,
        "must be in 0..5 (0 none, 1 stem, 2 stem+res2, ...)",
    )
    for key in (
        "NUM_GROUPS",
        "WIDTH_PER_GROUP",
        "STEM_OUT_CHANNELS",
        "RES2_OUT_CHANNELS",
        "BACKBONE_OUT_CHANNELS",
    ):
        require(m.RESNETS[key] >= 1, f"MODEL.RESNETS.{key}", m.RESNETS[key], "must be >= 1")
    require(
        m.GROUP_NORM.NUM_GROUPS >= 1,
        "MODEL.GROUP_NORM.NUM_GROUPS",
        m.GROUP_NORM.NUM_GROUPS,
        "must be >= 1",
    )
    require(
        m.GROUP_NORM.DIM_PER_GP == -1 or m.GROUP_NORM.DIM_PER_GP >= 1,
        "MODEL.GROUP_NORM.DIM_PER_GP",
        m.GROUP_NORM.DIM_PER_GP,
        "must be -1 or >= 1",
    )

    r = m.RETINANET
    require(
        r.NUM_CLASSES >= 2,
        "MODEL.RETINANET.NUM_CLASSES",
        r.NUM_CLASSES,
        "counts the background, so it must be >= 2",
    )
    require(
        len(r.ANCHOR_SIZES) == len(r.ANCHOR_STRIDES) == 5,
        "MODEL.RETINANET.ANCHOR_SIZES",
        r.ANCHOR_SIZES,
        "needs one size and one stride (ANCHOR_STRIDES) per level P3-P7",
    )
    require(
        tuple(r.ANCHOR_STRIDES) == (8, 16, 32, 64, 128),
        "MODEL.RETINANET.ANCHOR_STRIDES",
        r.ANCHOR_STRIDES,
        "must be the strides of P3-P7, (8, 16, 32, 64, 128)",
    )
    require(
        len(r.ASPECT_RATIOS) >= 1 and all(a > 0 for a in r.ASPECT_RATIOS),
        "MODEL.RETINANET.ASPECT_RATIOS",
        r.ASPECT_RATIOS,
        "must be positive numbers",
    )
    require(
        r.SCALES_PER_OCTAVE >= 1,
        "MODEL.RETINANET.SCALES_PER_OCTAVE",
        r.SCALES_PER_OCTAVE,
        "must be >= 1",
    )
    require(r.NUM_CONVS >= 0, "MODEL.RETINANET.NUM_CONVS", r.NUM_CONVS, "must be >= 0")
    require(
        0.0 <= r.BG_IOU_THRESHOLD <= r.FG_IOU_THRESHOLD <= 1.0,
        "MODEL.RETINANET.BG_IOU_THRESHOLD",
        r.BG_IOU_THRESHOLD,
        f"needs 0 <= BG_IOU_THRESHOLD <= FG_IOU_THRESHOLD ({r.FG_IOU_THRESHOLD}) <= 1",
    )
    require(
        0.0 < r.PRIOR_PROB < 1.0, "MODEL.RETINANET.PRIOR_PROB", r.PRIOR_PROB, "must be in (0, 1)"
    )
    require(
        0.0 <= r.INFERENCE_TH < 1.0,
        "MODEL.RETINANET.INFERENCE_TH",
        r.INFERENCE_TH,
        "must be in [0, 1)",
    )
    require(0.0 <= r.NMS_TH <= 1.0, "MODEL.RETINANET.NMS_TH", r.NMS_TH, "must be in [0, 1]")
    require(
        r.BBOX_REG_BETA >= 0.0, "MODEL.RETINANET.BBOX_REG_BETA", r.BBOX_REG_BETA, "must be >= 0"
    )

    f = m.FCOS
    require(f.NUM_CONVS >= 0, "MODEL.FCOS.NUM_CONVS", f.NUM_CONVS, "must be >= 0")
    require(0.0 < f.PRIOR_PROB < 1.0, "MODEL.FCOS.PRIOR_PROB", f.PRIOR_PROB, "must be in (0, 1)")
    require(
        len(f.SIZES_OF_INTEREST) == 4
        and all(s > 0 for s in f.SIZES_OF_INTEREST)
        and list(f.SIZES_OF_INTEREST) == sorted(f.SIZES_OF_INTEREST),
        "MODEL.FCOS.SIZES_OF_INTEREST",
        f.SIZES_OF_INTEREST,
        "needs 4 increasing positive bounds between the levels P3-P7",
    )
    require(
        f.CENTER_SAMPLING_RADIUS >= 0.0,
        "MODEL.FCOS.CENTER_SAMPLING_RADIUS",
        f.CENTER_SAMPLING_RADIUS,
        "must be >= 0 (0: off)",
    )
    require(
        0.0 <= f.INFERENCE_TH < 1.0, "MODEL.FCOS.INFERENCE_TH", f.INFERENCE_TH, "must be in [0, 1)"
    )
    require(0.0 <= f.NMS_TH <= 1.0, "MODEL.FCOS.NMS_TH", f.NMS_TH, "must be in [0, 1]")
    require(f.PRE_NMS_TOP_N >= 1, "MODEL.FCOS.PRE_NMS_TOP_N", f.PRE_NMS_TOP_N, "must be >= 1")

    require(
        len(cfg.INPUT.MIN_SIZE_TRAIN) >= 1 and all(s > 0 for s in cfg.INPUT.MIN_SIZE_TRAIN),
        "INPUT.MIN_SIZE_TRAIN",
        cfg.INPUT.MIN_SIZE_TRAIN,
        "must list positive sizes",
    )
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        require(len(cfg.INPUT[key]) == 3, f"INPUT.{key}", cfg.INPUT[key], "needs 3 values")
    require(
        all(s > 0 for s in cfg.INPUT.PIXEL_STD),
        "INPUT.PIXEL_STD",
        cfg.INPUT.PIXEL_STD,
        "must be positive",
    )
    require(
        0.0 <= cfg.INPUT.HORIZONTAL_FLIP_PROB_TRAIN <= 1.0,
        "INPUT.HORIZONTAL_FLIP_PROB_TRAIN",
        cfg.INPUT.HORIZONTAL_FLIP_PROB_TRAIN,
        "must be in [0, 1]",
    )
    require(
        cfg.DATALOADER.SIZE_DIVISIBILITY >= 0,
        "DATALOADER.SIZE_DIVISIBILITY",
        cfg.DATALOADER.SIZE_DIVISIBILITY,
        "must be >= 0 (0: no padding)",
    )
    require(
        cfg.DATALOADER.MAX_BAD_IMAGES >= 0,
        "DATALOADER.MAX_BAD_IMAGES",
        cfg.DATALOADER.MAX_BAD_IMAGES,
        "must be >= 0 (0: stop at the first unreadable image)",
    )

    s = cfg.SOLVER
    require(s.BASE_LR > 0.0, "SOLVER.BASE_LR", s.BASE_LR, "must be > 0")
    require(s.IMS_PER_BATCH >= 1, "SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH, "must be >= 1")
    require(list(s.STEPS) == sorted(s.STEPS), "SOLVER.STEPS", s.STEPS, "must be increasing")
    require(s.MAX_ITER >= 1, "SOLVER.MAX_ITER", s.MAX_ITER, "must be >= 1")
    require(
        s.DIST_TIMEOUT_MINUTES > 0,
        "SOLVER.DIST_TIMEOUT_MINUTES",
        s.DIST_TIMEOUT_MINUTES,
        "must be > 0 (minutes, fractions allowed)",
    )
    require(
        cfg.TEST.IMS_PER_BATCH >= 1, "TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH, "must be >= 1"
    )
    if freeze:
        cfg.freeze()
    return cfg

"""The config node of drdet: yacs' CfgNode with `_BASE_` inheritance, strict typed merging whose
errors name the key, and a validation step for the enumerated and ranged values."""
import os
from typing import Any, Dict, List, Sequence, Tuple

import yaml
from yacs.config import CfgNode as _YacsCfgNode

BASE_KEY = "_BASE_"

# Allowed values of the enumerated keys, by full key name.
CHOICES: Dict[str, Tuple[str, ...]] = {
    "MODEL.RESNETS.NORM": ("FrozenBN", "BN", "GN", "SyncBN"),
    "MODEL.RETINANET.ANCHOR_CONVENTION": ("exact", "torchvision", "maskrcnn_benchmark"),
    "MODEL.DR_LOSS.SMOOTHING": ("logistic", "quadratic", "hinge"),
    "MODEL.DR_LOSS.PAIRING": ("dr", "negonly"),
    "MODEL.DR_LOSS.GROUPING": ("image", "batch"),
    "SOLVER.WARMUP_METHOD": ("constant", "linear"),
    "SOLVER.LR_SCHEDULER": ("multistep", "cosine"),
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
        _merge_dict(_load_yaml_with_base(cfg_filename), self, [])

    def merge_from_other_cfg(self, cfg_other: "_YacsCfgNode") -> None:
        _merge_dict(cfg_other, self, [])

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``["MODEL.RETINANET.LOSS_TYPE", "DR", "SOLVER.BASE_LR", "0.005", ...]``."""
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"config overrides must be KEY VALUE pairs; got an odd number ({len(cfg_list)})"
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
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

    def validate(self, freeze: bool = True) -> "CfgNode":
        validate_cfg(self, freeze=freeze)
        return self


def _load_yaml_with_base(path: str) -> Dict[str, Any]:
    """Read ``path`` with yaml.safe_load and resolve its ``_BASE_`` chain into one dict."""
    with open(path, "r") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level, not {type(data)}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{BASE_KEY} in {path} must be a path string, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    merged = _load_yaml_with_base(base_path)
    _update_dict(merged, data)
    return merged


def _update_dict(base: Dict[str, Any], override: Dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update_dict(base[key], value)
        else:
            base[key] = value


def _merge_dict(src: Dict[str, Any], dst: _YacsCfgNode, prefix: List[str]) -> None:
    for key, value in src.items():
        full_key = ".".join(prefix + [str(key)])
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


def _require(ok: bool, full_key: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"config key {full_key} = {value!r} is invalid: {what}")


def _check_registered_names(cfg: _YacsCfgNode) -> None:
    """Keys whose value names a registered component (drdet.utils.registry) must name one."""
    import drdet.modeling  # noqa: F401  (registers the built-in components)
    from drdet.utils.registry import registries

    for registry in registries():
        for full_key in registry.config_keys:
            value = _get(cfg, full_key)
            _require(value in registry, full_key, value,
                     f"must be a registered {registry.name}: one of {registry.names()}")


def validate_cfg(cfg: _YacsCfgNode, freeze: bool = True) -> _YacsCfgNode:
    """Check enumerated and ranged values of ``cfg``; raise ValueError naming the key.

    Returns ``cfg``, frozen when ``freeze`` is True.
    """
    for full_key, choices in CHOICES.items():
        value = _get(cfg, full_key)
        _require(value in choices, full_key, value, f"must be one of {list(choices)}")
    _check_registered_names(cfg)

    m = cfg.MODEL
    _require(0 <= m.BACKBONE.FREEZE_CONV_BODY_AT <= 5, "MODEL.BACKBONE.FREEZE_CONV_BODY_AT",
             m.BACKBONE.FREEZE_CONV_BODY_AT, "must be in 0..5 (0 none, 1 stem, 2 stem+res2, ...)")
    for key in ("NUM_GROUPS", "WIDTH_PER_GROUP", "STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS",
                "BACKBONE_OUT_CHANNELS"):
        _require(m.RESNETS[key] >= 1, f"MODEL.RESNETS.{key}", m.RESNETS[key], "must be >= 1")
    _require(m.RESNETS.RES5_DILATION == 1, "MODEL.RESNETS.RES5_DILATION", m.RESNETS.RES5_DILATION,
             "the FPN-RETINANET bodies need a stride-32 C5 (dilation 1)")
    if m.BACKBONE.CONV_BODY in ("R-18-FPN-RETINANET", "R-34-FPN-RETINANET"):
        _require(m.RESNETS.NUM_GROUPS == 1, "MODEL.RESNETS.NUM_GROUPS", m.RESNETS.NUM_GROUPS,
                 "basic-block bodies (R-18/34) have no grouped convs")
    _require(m.GROUP_NORM.NUM_GROUPS >= 1, "MODEL.GROUP_NORM.NUM_GROUPS",
             m.GROUP_NORM.NUM_GROUPS, "must be >= 1")
    _require(m.GROUP_NORM.DIM_PER_GP == -1 or m.GROUP_NORM.DIM_PER_GP >= 1,
             "MODEL.GROUP_NORM.DIM_PER_GP", m.GROUP_NORM.DIM_PER_GP, "must be -1 or >= 1")

    r = m.RETINANET
    _require(r.NUM_CLASSES >= 2, "MODEL.RETINANET.NUM_CLASSES", r.NUM_CLASSES,
             "counts the background, so it must be >= 2")
    _require(len(r.ANCHOR_SIZES) == len(r.ANCHOR_STRIDES) == 5, "MODEL.RETINANET.ANCHOR_SIZES",
             r.ANCHOR_SIZES, "needs one size and one stride (ANCHOR_STRIDES) per level P3-P7")
    _require(tuple(r.ANCHOR_STRIDES) == (8, 16, 32, 64, 128), "MODEL.RETINANET.ANCHOR_STRIDES",
             r.ANCHOR_STRIDES, "must be the strides of P3-P7, (8, 16, 32, 64, 128)")
    _require(len(r.ASPECT_RATIOS) >= 1 and all(a > 0 for a in r.ASPECT_RATIOS),
             "MODEL.RETINANET.ASPECT_RATIOS", r.ASPECT_RATIOS, "must be positive numbers")
    _require(r.SCALES_PER_OCTAVE >= 1, "MODEL.RETINANET.SCALES_PER_OCTAVE", r.SCALES_PER_OCTAVE,
             "must be >= 1")
    _require(r.NUM_CONVS >= 0, "MODEL.RETINANET.NUM_CONVS", r.NUM_CONVS, "must be >= 0")
    _require(0.0 <= r.BG_IOU_THRESHOLD <= r.FG_IOU_THRESHOLD <= 1.0,
             "MODEL.RETINANET.BG_IOU_THRESHOLD", r.BG_IOU_THRESHOLD,
             f"needs 0 <= BG_IOU_THRESHOLD <= FG_IOU_THRESHOLD ({r.FG_IOU_THRESHOLD}) <= 1")
    _require(0.0 < r.PRIOR_PROB < 1.0, "MODEL.RETINANET.PRIOR_PROB", r.PRIOR_PROB,
             "must be in (0, 1)")
    _require(0.0 <= r.INFERENCE_TH < 1.0, "MODEL.RETINANET.INFERENCE_TH", r.INFERENCE_TH,
             "must be in [0, 1)")
    _require(0.0 <= r.NMS_TH <= 1.0, "MODEL.RETINANET.NMS_TH", r.NMS_TH, "must be in [0, 1]")
    _require(r.BBOX_REG_BETA >= 0.0, "MODEL.RETINANET.BBOX_REG_BETA", r.BBOX_REG_BETA,
             "must be >= 0")

    f = m.FCOS
    _require(f.REG_LOSS in ("giou", "iou"), "MODEL.FCOS.REG_LOSS", f.REG_LOSS,
             "must be one of ['giou', 'iou']")
    _require(f.NUM_CONVS >= 0, "MODEL.FCOS.NUM_CONVS", f.NUM_CONVS, "must be >= 0")
    _require(0.0 < f.PRIOR_PROB < 1.0, "MODEL.FCOS.PRIOR_PROB", f.PRIOR_PROB, "must be in (0, 1)")
    _require(len(f.SIZES_OF_INTEREST) == 4 and all(s > 0 for s in f.SIZES_OF_INTEREST)
             and list(f.SIZES_OF_INTEREST) == sorted(f.SIZES_OF_INTEREST),
             "MODEL.FCOS.SIZES_OF_INTEREST", f.SIZES_OF_INTEREST,
             "needs 4 increasing positive bounds between the levels P3-P7")
    _require(f.CENTER_SAMPLING_RADIUS >= 0.0, "MODEL.FCOS.CENTER_SAMPLING_RADIUS",
             f.CENTER_SAMPLING_RADIUS, "must be >= 0 (0: off)")
    _require(0.0 <= f.INFERENCE_TH < 1.0, "MODEL.FCOS.INFERENCE_TH", f.INFERENCE_TH,
             "must be in [0, 1)")
    _require(0.0 <= f.NMS_TH <= 1.0, "MODEL.FCOS.NMS_TH", f.NMS_TH, "must be in [0, 1]")
    _require(f.PRE_NMS_TOP_N >= 1, "MODEL.FCOS.PRE_NMS_TOP_N", f.PRE_NMS_TOP_N, "must be >= 1")

    d = m.DR_LOSS
    for key in ("POS_LAMBDA", "NEG_LAMBDA", "L", "TAU", "RHO"):
        _require(d[key] > 0.0, f"MODEL.DR_LOSS.{key}", d[key], "must be > 0")
    _require(d.MARGIN >= 0.0, "MODEL.DR_LOSS.MARGIN", d.MARGIN, "must be >= 0")
    for key in ("H_POS", "H_NEG"):
        _require(d[key] == 0.0 or d[key] > 1.0, f"MODEL.DR_LOSS.{key}", d[key],
                 "must be 0 (unused) or > 1 (lambda = c / ln h)")

    _require(len(cfg.INPUT.MIN_SIZE_TRAIN) >= 1 and all(s > 0 for s in cfg.INPUT.MIN_SIZE_TRAIN),
             "INPUT.MIN_SIZE_TRAIN", cfg.INPUT.MIN_SIZE_TRAIN, "must list positive sizes")
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        _require(len(cfg.INPUT[key]) == 3, f"INPUT.{key}", cfg.INPUT[key], "needs 3 values")
    _require(all(s > 0 for s in cfg.INPUT.PIXEL_STD), "INPUT.PIXEL_STD", cfg.INPUT.PIXEL_STD,
             "must be positive")
    _require(0.0 <= cfg.INPUT.HORIZONTAL_FLIP_PROB_TRAIN <= 1.0,
             "INPUT.HORIZONTAL_FLIP_PROB_TRAIN", cfg.INPUT.HORIZONTAL_FLIP_PROB_TRAIN,
             "must be in [0, 1]")
    _require(cfg.DATALOADER.SIZE_DIVISIBILITY >= 0, "DATALOADER.SIZE_DIVISIBILITY",
             cfg.DATALOADER.SIZE_DIVISIBILITY, "must be >= 0 (0: no padding)")
    _require(cfg.DATALOADER.MAX_BAD_IMAGES >= 0, "DATALOADER.MAX_BAD_IMAGES",
             cfg.DATALOADER.MAX_BAD_IMAGES, "must be >= 0 (0: stop at the first unreadable image)")

    s = cfg.SOLVER
    _require(s.BASE_LR > 0.0, "SOLVER.BASE_LR", s.BASE_LR, "must be > 0")
    _require(s.IMS_PER_BATCH >= 1, "SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH, "must be >= 1")
    _require(list(s.STEPS) == sorted(s.STEPS), "SOLVER.STEPS", s.STEPS, "must be increasing")
    _require(s.MAX_ITER >= 1, "SOLVER.MAX_ITER", s.MAX_ITER, "must be >= 1")
    _require(s.DIST_TIMEOUT_MINUTES > 0, "SOLVER.DIST_TIMEOUT_MINUTES", s.DIST_TIMEOUT_MINUTES,
             "must be > 0 (minutes, fractions allowed)")
    _require(cfg.TEST.IMS_PER_BATCH >= 1, "TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH,
             "must be >= 1")
    if freeze:
        cfg.freeze()
    return cfg

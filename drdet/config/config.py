"""The config node of drdet: yacs' CfgNode with `_BASE_` inheritance, strict typed merging whose
errors name the key, keys of earlier versions mapped to their new places, and the setup of the
classification loss a config names re-applied after every merge (drdet/config/setups.py).

The config layer sits below the model: it imports nothing of drdet but utils. The parts of the
model declare their own config nodes and checks (drdet/config/schema.py) and the setups of
their losses (drdet/config/setups.py) when their modules are imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsCfgNode

BASE_KEY = "_BASE_"

logger = logging.getLogger(__name__)

# Keys that moved, old -> new. A yaml file or override that sets the old key still loads: the
# value goes to the new key, with a warning naming it.
MOVED_KEYS: dict[str, str] = {
    "MODEL.RETINANET.NUM_CLASSES": "MODEL.NUM_CLASSES",
    "MODEL.RETINANET.USE_C5": "MODEL.FPN.USE_C5",
    "MODEL.RETINANET.ANCHOR_CONVENTION": "MODEL.ANCHOR_GENERATOR.CONVENTION",
    "MODEL.RETINANET.LOSS_ALPHA": "MODEL.FOCAL_LOSS.ALPHA",
    "MODEL.RETINANET.LOSS_GAMMA": "MODEL.FOCAL_LOSS.GAMMA",
}

# Keys added since MOVED_KEYS moved, with the value every version before the move used. A file
# that sets a moved key was written for such a version; where it leaves one of these keys out,
# it gets that value (with a warning), so an old run detects as it did, even where a loss's
# setup now sets another value (the DR loss's on FCOS: 0.75).
ADDED_KEYS: dict[str, Any] = {
    "MODEL.FCOS.CLASS_SCORE_EXPONENT": 0.5,
}

# Keys drdet no longer reads, and why. A yaml file or override that sets one still loads: the
# value is ignored with a warning.
REMOVED_KEYS: dict[str, str] = {
    "MODEL.RETINANET_ON": "the detector is MODEL.META_ARCHITECTURE",
    "MODEL.RETINANET.STRADDLE_THRESH": "anchors crossing the image border are always kept, as "
    "in maskrcnn-benchmark's RetinaNet",
    "MODEL.RETINANET.ANCHOR_STRIDES": "the anchors of each level take the stride of the "
    "backbone's feature map (its `strides`)",
    "TEST.EXPECTED_RESULTS": "drdet does not compare results against expected values",
}


class CfgNode(_YacsCfgNode):
    """yacs CfgNode whose merges are strict and name the offending key.

    - ``merge_from_file(path)`` reads yaml with ``yaml.safe_load`` and follows
      ``_BASE_: other.yaml`` (relative to the including file), merging the base first, recursively.
    - An unknown key raises ``KeyError("Unknown config key: MODEL.FOO")``; a value of the wrong
      type raises ``ValueError`` naming the key and both types. Allowed conversions: list <-> tuple
      and int -> float (so ``L: 6`` is accepted for a float key); bool is never taken for a number.
    - Every merge (file, list or other config) records the keys it sets as explicit, then applies
      the setup of the classification loss the config names to the keys no merge set
      (defaults < the loss's setup < yaml < overrides, on every merge path; drdet/config/setups.py).
    - Call :func:`drdet.config.validate_cfg` (or ``cfg.validate()``) before using a merged config;
      each registered part checks its own keys and, with ``freeze=True``, the node is frozen.
    """

    def explicit_keys(self) -> set[str]:
        """The full keys that a merge into this node has set (a yaml file, its _BASE_ chain,
        overrides), as opposed to defaults and loss setups."""
        return self.__dict__.setdefault("_explicit_keys", set())

    def merge_from_file(self, cfg_filename: str) -> None:
        """The yaml file (and its _BASE_ chain), then the setup of the loss it names."""
        self.merge_from_file_and_list(cfg_filename, ())

    def merge_from_file_and_list(self, cfg_filename: str, opts: Sequence[Any]) -> None:
        """The yaml file (with _BASE_), then the KEY VALUE ``opts``, then the setup of the loss
        the config names for every key neither of them sets."""
        _check_pairs(opts)
        _merge_dict(load_yaml_with_base(cfg_filename), self, [], self.explicit_keys())
        self._merge_pairs(opts)
        self._apply_loss_setup()

    def merge_from_other_cfg(self, cfg_other: _YacsCfgNode) -> None:
        _merge_dict(cfg_other, self, [], self.explicit_keys())
        self._apply_loss_setup()

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``["MODEL.RETINANET.LOSS_TYPE", "DR", "SOLVER.BASE_LR", "0.005", ...]``."""
        _check_pairs(cfg_list)
        self._merge_pairs(cfg_list)
        self._apply_loss_setup()

    def validate(self, freeze: bool = True) -> CfgNode:
        from .schema import validate_cfg

        validate_cfg(self, freeze=freeze)
        return self

    def _merge_pairs(self, cfg_list: Sequence[Any]) -> None:
        for old_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            full_key = current_key(str(old_key), "the overrides")
            if full_key is None:
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
            node[parts[-1]] = _coerce(value, node[parts[-1]], full_key)
            self.explicit_keys().add(full_key)

    def _apply_loss_setup(self) -> None:
        from .setups import apply_loss_setup

        apply_loss_setup(self)


def _check_pairs(opts: Sequence[Any]) -> None:
    if len(opts) % 2 != 0:
        raise ValueError(
            f"config overrides must be KEY VALUE pairs; got an odd number ({len(opts)})"
        )


def current_key(full_key: str, where: str) -> str | None:
    """``full_key``, or its new name (MOVED_KEYS), or None for a removed key; a warning says
    which, naming ``where`` it was set (a file or the overrides)."""
    if full_key in MOVED_KEYS:
        new = MOVED_KEYS[full_key]
        logger.warning("%s: %s is now %s; the value is used for %s", where, full_key, new, new)
        return new
    if full_key in REMOVED_KEYS:
        logger.warning(
            "%s: %s is no longer used and is ignored (%s)", where, full_key, REMOVED_KEYS[full_key]
        )
        return None
    return full_key


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load keeps the last
    silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str) -> Any:
    """The data of the yaml file `path` (safe: plain data only). ValueError naming the file,
    line and problem for invalid YAML (tabs, a duplicated key, ...)."""
    with open(path) as f:
        text = f.read()
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        hint = " (indent with spaces: YAML does not allow tabs)" if "\t" in text else ""
        where = getattr(err, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"config file {path}{line}: invalid YAML: {problem}{hint}") from None


def load_yaml_with_base(path: str) -> dict[str, Any]:
    """Read ``path`` with yaml.safe_load and resolve its ``_BASE_`` chain into one dict. Keys of
    earlier versions are put in their current places (MOVED_KEYS) and removed ones dropped,
    file by file, before the files are merged."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level, not {type(data)}")
    base = data.pop(BASE_KEY, None)
    data = _current_keys(data, path)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{BASE_KEY} in {path} must be a path string, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    if not os.path.isfile(base_path):
        raise FileNotFoundError(f"{BASE_KEY} of config file {path}: {base_path} not found")
    merged = load_yaml_with_base(base_path)
    _update_dict(merged, data)
    return merged


def _current_keys(data: dict[str, Any], path: str) -> dict[str, Any]:
    """``data`` (a yaml file's mapping) with the keys of MOVED_KEYS / REMOVED_KEYS that it sets
    moved or dropped, and, if it set a moved key, the ADDED_KEYS of its nodes that it leaves
    out set to their earlier values."""
    moved = False
    for old in list(MOVED_KEYS) + list(REMOVED_KEYS):
        parent, leaf = _parent(data, old), old.rsplit(".", 1)[-1]
        if parent is None or leaf not in parent:
            continue
        value = parent.pop(leaf)
        new = current_key(old, path)
        moved = moved or new is not None
        if new is not None:
            node = data
            for part in new.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[new.split(".")[-1]] = value
    for key, value in ADDED_KEYS.items() if moved else ():
        parent, leaf = _parent(data, key), key.rsplit(".", 1)[-1]
        if parent is not None and leaf not in parent:
            logger.warning(
                "%s: written for a version without %s; %s is used, as that version did",
                path,
                key,
                value,
            )
            parent[leaf] = value
    return data


def _parent(data: dict[str, Any], full_key: str) -> dict[str, Any] | None:
    """The mapping of ``data`` that holds ``full_key``'s last part, or None if ``data`` has
    no such mapping."""
    parent: Any = data
    for part in full_key.split(".")[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    return parent if isinstance(parent, dict) else None


def _update_dict(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update_dict(base[key], value)
        else:
            base[key] = value


def _merge_dict(
    src: dict[str, Any], dst: _YacsCfgNode, prefix: list[str], explicit: set[str]
) -> None:
    for key, value in src.items():
        full_key = ".".join(prefix + [str(key)])
        if key not in dst:
            raise KeyError(f"Unknown config key: {full_key}")
        if isinstance(dst[key], _YacsCfgNode):
            if not isinstance(value, dict):
                raise ValueError(
                    f"config key {full_key} is a group of keys; got a {type(value).__name__}"
                )
            _merge_dict(value, dst[key], prefix + [str(key)], explicit)
        else:
            if isinstance(value, dict):
                raise ValueError(f"config key {full_key} takes a value, not a group of keys")
            if isinstance(value, str) and not isinstance(dst[key], str):
                # yaml leaves "(800,)" a string: read it as a Python literal, as yacs does.
                value = _YacsCfgNode._decode_cfg_value(value)
            dst[key] = _coerce(value, dst[key], full_key)
            explicit.add(full_key)


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

"""The schema of a drdet config, assembled from its parts: the framework's own keys
(drdet/config/defaults.py) plus the node each registered part declares for itself, and the
validation, a loop over the parts' own checks.

A part declares its node where it is defined (detectron2's ``add_*_config``, as data)::

    _FCOS = CfgNode()
    _FCOS.NUM_CONVS = 4
    add_config_node("MODEL.FCOS", _FCOS)

and checks its keys either always (``register_config_check("MODEL.ANCHOR_GENERATOR", fn)``) or
when the config selects it, as a registry entry (``META_ARCHITECTURES.register("FCOS",
build_fcos, check=check_fcos_cfg)``; drdet/utils/registry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drdet.utils.registry import load_builtins, registries

from .config import CfgNode
from .defaults import _C

# full path -> the node's defaults, in the order the parts declared them
_NODES: dict[str, Any] = {}
# name -> check(cfg) run on every config
_CHECKS: dict[str, Callable[[Any], None]] = {}


def add_config_node(path: str, node: Any) -> None:
    """Adds ``node`` (a CfgNode of defaults, or one key's default value) to every config made
    by :func:`get_cfg` at ``path`` ("MODEL.FCOS"), whose parent must exist. Declaring the same
    path twice with other defaults is an error."""
    if path in _NODES and _NODES[path] != node:
        raise KeyError(f"config node {path} is already declared, with other defaults")
    parent = _C
    for part in path.split(".")[:-1]:
        if part not in parent:
            raise KeyError(f"config node {path}: its parent {part!r} does not exist")
        parent = parent[part]
    if path.split(".")[-1] in parent:
        raise KeyError(f"config node {path} would replace a key of drdet/config/defaults.py")
    _NODES[path] = node


def register_config_check(name: str, check: Callable[[Any], None]) -> None:
    """``check(cfg)`` runs on every config :func:`validate_cfg` sees; it raises ValueError naming
    the key at fault (drdet.utils.checks.require). One check per name."""
    if name in _CHECKS and _CHECKS[name] is not check:
        raise KeyError(f"config check {name!r} is already registered")
    _CHECKS[name] = check


def get_cfg() -> CfgNode:
    """A new, independent, unfrozen config: the framework's defaults and every declared node."""
    load_builtins()
    cfg = _C.clone()
    for path, node in _NODES.items():
        parent = cfg
        for part in path.split(".")[:-1]:
            parent = parent[part]
        parent[path.split(".")[-1]] = node.clone() if isinstance(node, CfgNode) else node
    return cfg


def validate_cfg(cfg: CfgNode, freeze: bool = True) -> CfgNode:
    """Runs every registered config check, then, for every registry, checks that the keys
    selecting its entries name registered ones and runs the checks of the selected entries.
    Raises ValueError naming the key at fault. Returns ``cfg``, frozen when ``freeze``."""
    load_builtins()
    for check in _CHECKS.values():
        check(cfg)
    for registry in registries():
        registry.check_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg

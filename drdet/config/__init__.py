"""Configuration: ``get_cfg()`` returns a fresh copy of the defaults (there is no global cfg).

Typical use::

    cfg = get_cfg()
    cfg.merge_from_file("configs/dr_retina/dr_R-50-FPN_1x.yaml")   # follows _BASE_
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.005"])
    validate_cfg(cfg)                                               # checks and freezes

Switching the classification loss in a merge (``merge_from_list(["MODEL.RETINANET.LOSS_TYPE",
"FOCAL"])``) switches the setup that comes with it (drdet/config/setups.py). The config layer
imports no model code: each part of the model declares its node and its checks here when it is
imported (drdet/config/schema.py).
"""

from .config import MOVED_KEYS, REMOVED_KEYS, CfgNode, load_yaml_with_base
from .schema import add_config_node, get_cfg, register_config_check, validate_cfg
from .setups import (
    RECIPE_FIELDS,
    loss_key,
    loss_setup,
    register_detector_losses,
    register_loss_recipe,
    register_loss_setup,
    setup_keys,
)


def flat_keys(data, prefix: str = "") -> dict:
    """{"MODEL.RETINANET.PRIOR_PROB": 0.5, ...}: the leaves of a nested mapping (a yaml file's
    data or a CfgNode)."""
    out: dict = {}
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_keys(value, full_key + "."))
        else:
            out[full_key] = value
    return out


__all__ = [
    "MOVED_KEYS",
    "RECIPE_FIELDS",
    "REMOVED_KEYS",
    "CfgNode",
    "add_config_node",
    "flat_keys",
    "get_cfg",
    "load_yaml_with_base",
    "loss_key",
    "loss_setup",
    "register_config_check",
    "register_detector_losses",
    "register_loss_recipe",
    "register_loss_setup",
    "setup_keys",
    "validate_cfg",
]

"""Configuration: ``get_cfg()`` returns a fresh copy of the defaults (there is no global cfg).

Typical use::

    cfg = get_cfg()
    cfg.merge_from_file("configs/dr_retina/dr_R-50-FPN_1x.yaml")   # follows _BASE_
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.005"])
    validate_cfg(cfg)                                               # checks and freezes
"""

from .config import CfgNode, load_yaml_with_base, validate_cfg
from .defaults import _C
from .loss_setup import flat_keys


def get_cfg() -> CfgNode:
    """A new, independent, unfrozen copy of drdet's default config."""
    return _C.clone()


__all__ = ["CfgNode", "flat_keys", "get_cfg", "load_yaml_with_base", "validate_cfg"]

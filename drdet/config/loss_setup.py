"""The loss-aware layer of config loading: the setup values of the classification loss a config
names, to apply under the config's explicit keys.

Order of precedence: defaults < the named loss's setup < the yaml file (with its _BASE_ chain)
< command-line overrides. The setups are declared by the loss modules
(``drdet.modeling.losses.setup``; imported when called, as config sits above the model in the
import order but must not import it at import time). A config that names no loss (neither the
yaml chain nor the overrides set the detector's loss key) gets the plain defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def flat_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"MODEL.RETINANET.PRIOR_PROB": 0.5, ...}: the leaves of a nested yaml mapping."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_keys(value, full_key + "."))
        else:
            out[full_key] = value
    return out


def _named(
    key: str, yaml_keys: Mapping[str, Any], overrides: Mapping[str, Any], default: Any | None
) -> Any | None:
    """The value of ``key`` the overrides give, else the yaml's, else ``default``."""
    if key in overrides:
        return overrides[key]
    return yaml_keys.get(key, default)


def named_loss(
    yaml_data: Mapping[str, Any], opts: Sequence[Any], default_meta: str
) -> tuple[str, str, str | None]:
    """(meta-architecture, its loss key, the loss the yaml or the overrides name or None)."""
    from drdet.modeling.losses.setup import loss_type_key

    yaml_keys = flat_keys(yaml_data)
    overrides = dict(zip(opts[0::2], opts[1::2]))
    meta = str(_named("MODEL.META_ARCHITECTURE", yaml_keys, overrides, default_meta))
    key = loss_type_key(meta)
    loss = _named(key, yaml_keys, overrides, None)
    return meta, key, None if loss is None else str(loss)


def setup_values(
    yaml_data: Mapping[str, Any], opts: Sequence[Any], default_meta: str
) -> dict[str, Any]:
    """The setup values (full key -> value) of the loss that ``yaml_data`` (a yaml mapping with
    its _BASE_ chain resolved) or ``opts`` (KEY VALUE list) name, less the keys they set
    themselves; {} when no loss is named or the named loss declares no setup for the
    meta-architecture (``default_meta``: the meta-architecture when neither names one)."""
    from drdet.modeling.losses.setup import loss_setup

    meta, _, loss = named_loss(yaml_data, opts, default_meta)
    if loss is None:
        return {}
    setup = loss_setup(loss, meta) or {}
    explicit: set[str] = set(flat_keys(yaml_data)) | {str(k) for k in opts[0::2]}
    return {k: v for k, v in setup.items() if k not in explicit}

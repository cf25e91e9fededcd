"""Per-loss setups: the config values a classification loss brings with it for a detector.

The paper's two setups differ in more than the loss: Dr. Retina trains with a prior probability of
0.5, a matcher without an ignored band (FG 0.5 / BG 0.5) and a score threshold of 0.2 (the
released configs), RetinaNet with 0.01, 0.5 / 0.4 and 0.05. Each loss module declares its own
setup here, per meta-architecture::

    register_loss_setup("DR", "RetinaNet", {"MODEL.RETINANET.PRIOR_PROB": 0.5, ...})

and config loading (:func:`drdet.config.merge_with_loss_setup`) applies the setup of the loss a
config names under the config's explicit keys: defaults < loss setup < yaml (with _BASE_) <
command-line overrides. A detector names its loss with ``MODEL.<ARCH>.LOSS_TYPE``
(``MODEL.RETINANET.LOSS_TYPE``, ``MODEL.FCOS.LOSS_TYPE``); :func:`register_loss_key` declares
another key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (loss name, meta-architecture) -> {full config key: value}
_SETUPS: dict[tuple[str, str], dict[str, Any]] = {}
# meta-architecture -> full config key naming its classification loss
_LOSS_KEYS: dict[str, str] = {"RetinaNet": "MODEL.RETINANET.LOSS_TYPE"}


def register_loss_setup(loss: str, meta_architecture: str, values: Mapping[str, Any]) -> None:
    """Declares the config values (full key -> value) that ``loss`` sets for detectors of
    ``meta_architecture``. Registering the same pair twice with other values is an error."""
    key = (loss, meta_architecture)
    if key in _SETUPS and _SETUPS[key] != dict(values):
        raise KeyError(
            f"the setup of loss {loss!r} for {meta_architecture!r} is already "
            f"registered: {_SETUPS[key]}"
        )
    _SETUPS[key] = dict(values)


def register_loss_key(meta_architecture: str, full_key: str) -> None:
    """The config key naming the classification loss of ``meta_architecture``, when it is not
    ``MODEL.<META_ARCHITECTURE in capitals>.LOSS_TYPE``."""
    _LOSS_KEYS[meta_architecture] = full_key


def loss_type_key(meta_architecture: str) -> str:
    """The config key naming the classification loss of ``meta_architecture``
    (RetinaNet: ``MODEL.RETINANET.LOSS_TYPE``; otherwise ``MODEL.<ARCH>.LOSS_TYPE``)."""
    return _LOSS_KEYS.get(meta_architecture, f"MODEL.{meta_architecture.upper()}.LOSS_TYPE")


def loss_setup(loss: str, meta_architecture: str) -> dict[str, Any] | None:
    """The setup ``loss`` declares for ``meta_architecture`` (a copy), or None if none."""
    values = _SETUPS.get((loss, meta_architecture))
    return None if values is None else dict(values)


def setup_keys(meta_architecture: str) -> tuple[str, ...]:
    """Every key some loss's setup sets for ``meta_architecture``, sorted."""
    keys = {k for (_, arch), values in _SETUPS.items() if arch == meta_architecture for k in values}
    return tuple(sorted(keys))

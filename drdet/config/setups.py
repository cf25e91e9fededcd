"""The setup a classification loss brings to the detector that uses it.

The paper's two setups differ in more than the loss: Dr. Retina trains with a prior probability
of 0.5, a matcher without an ignored band (FG 0.5 / BG 0.5) and a score threshold of 0.2, the
focal-loss RetinaNet with 0.01, 0.5 / 0.4 and 0.05. So that a config which names a loss gets
its setup, and switching the loss switches the setup, the two sides each say their half once:

- a loss states what it needs, in terms every detector understands (:data:`RECIPE_FIELDS`)::

      register_loss_recipe("DR", prior_prob=0.5, fg_iou_threshold=0.5, ...)

- a detector names the key that selects its loss and maps the recipe's terms onto its own keys,
  taking those that apply to it (FCOS has no IoU matcher, so it takes only the prior)::

      register_detector_losses(
          "FCOS", loss_key="MODEL.FCOS.LOSS_TYPE", fields={"prior_prob": "MODEL.FCOS.PRIOR_PROB"}
      )

- values that hold for one loss on one detector only (a setting tuned for that pair) are
  declared for the pair: ``register_loss_setup("DR", "FCOS", {"MODEL.FCOS.X": ...})``.

After every merge (drdet.config.CfgNode) the setup of the loss the config names is applied to
the detector's setup keys that no merge has set: defaults < the loss's setup < the yaml file
(with its _BASE_ chain) < overrides, whichever way the config was merged; a key changed by hand
since the setup set it is left alone too. A config that names no loss (its detector's loss key
was never merged) keeps the defaults. The dumped config.yaml holds the values used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drdet.utils.registry import config_value, load_builtins

# What a loss may ask of the detector, in detector-neutral terms.
RECIPE_FIELDS = (
    "prior_prob",  # initial foreground probability of the classifier
    "fg_iou_threshold",  # IoU matcher: foreground at or above
    "bg_iou_threshold",  # IoU matcher: background below (between the two: ignored)
    "score_threshold",  # inference: scores at or below are dropped before NMS
    "nms_threshold",  # inference: class-aware NMS IoU
)


@dataclass
class DetectorLosses:
    """How a detector takes its classification loss: the key naming it, the detector's key for
    each recipe field it adopts, and values declared for one (loss, detector) pair."""

    loss_key: str
    fields: dict[str, str]
    per_loss: dict[str, dict[str, Any]] = field(default_factory=dict)


_RECIPES: dict[str, dict[str, Any]] = {}
_DETECTORS: dict[str, DetectorLosses] = {}


def register_loss_recipe(loss: str, **values: Any) -> None:
    """What ``loss`` needs of any detector (keywords from :data:`RECIPE_FIELDS`)."""
    unknown = sorted(set(values) - set(RECIPE_FIELDS))
    if unknown:
        raise KeyError(f"loss {loss!r}: unknown recipe fields {unknown}; known: {RECIPE_FIELDS}")
    if loss in _RECIPES and _RECIPES[loss] != values:
        raise KeyError(f"the recipe of loss {loss!r} is already registered: {_RECIPES[loss]}")
    _RECIPES[loss] = dict(values)


def register_detector_losses(
    meta_architecture: str, loss_key: str, fields: Mapping[str, str]
) -> None:
    """``meta_architecture`` names its classification loss with ``loss_key`` and takes the recipe
    fields ``fields`` (recipe field -> its full config key)."""
    unknown = sorted(set(fields) - set(RECIPE_FIELDS))
    if unknown:
        raise KeyError(f"{meta_architecture}: unknown recipe fields {unknown}")
    entry = _DETECTORS.get(meta_architecture)
    per_loss = entry.per_loss if entry else {}
    _DETECTORS[meta_architecture] = DetectorLosses(loss_key, dict(fields), per_loss)


def register_loss_setup(loss: str, meta_architecture: str, values: Mapping[str, Any]) -> None:
    """Config values (full key -> value) of ``loss`` on ``meta_architecture`` alone; they take
    precedence over the recipe. Registering the same pair twice with other values is an error."""
    entry = _DETECTORS.setdefault(meta_architecture, DetectorLosses("", {}))
    if loss in entry.per_loss and entry.per_loss[loss] != dict(values):
        raise KeyError(
            f"the setup of loss {loss!r} for {meta_architecture!r} is already registered: "
            f"{entry.per_loss[loss]}"
        )
    entry.per_loss[loss] = dict(values)


def loss_key(meta_architecture: str) -> str | None:
    """The full config key naming the classification loss of ``meta_architecture``, or None for
    a detector that declares none."""
    load_builtins()
    entry = _DETECTORS.get(meta_architecture)
    return entry.loss_key if entry and entry.loss_key else None


def loss_setup(loss: str, meta_architecture: str) -> dict[str, Any]:
    """{full key: value} that ``loss`` sets on ``meta_architecture`` (its recipe mapped onto the
    detector's keys, then the values declared for the pair)."""
    load_builtins()
    entry = _DETECTORS.get(meta_architecture)
    if entry is None:
        return {}
    recipe = _RECIPES.get(loss, {})
    values = {key: recipe[f] for f, key in entry.fields.items() if f in recipe}
    values.update(entry.per_loss.get(loss, {}))
    return values


def setup_keys(meta_architecture: str) -> tuple[str, ...]:
    """Every key that some loss's setup sets on ``meta_architecture``, sorted."""
    load_builtins()
    keys = {
        k
        for loss in set(_RECIPES) | _pair_losses(meta_architecture)
        for k in loss_setup(loss, meta_architecture)
    }
    return tuple(sorted(keys))


def _pair_losses(meta_architecture: str) -> set[str]:
    entry = _DETECTORS.get(meta_architecture)
    return set(entry.per_loss) if entry else set()


def apply_loss_setup(cfg) -> None:
    """Puts the setup of the loss ``cfg`` names on the setup keys no merge set (module
    docstring); the keys it writes are remembered, so that a later switch of the loss can
    replace them and a value changed by hand in between is kept."""
    meta = cfg.MODEL.META_ARCHITECTURE
    key = loss_key(meta)
    if key is None:
        return
    explicit = cfg.explicit_keys()
    values = loss_setup(config_value(cfg, key), meta) if key in explicit else {}
    written = cfg.__dict__.setdefault("_setup_written", {})
    defaults = None
    for full_key in setup_keys(meta):
        current = config_value(cfg, full_key)
        if full_key in explicit or (full_key in written and current != written[full_key]):
            continue
        if full_key not in values and defaults is None:
            from .schema import get_cfg

            defaults = get_cfg()
        value = values[full_key] if full_key in values else config_value(defaults, full_key)
        _set(cfg, full_key, value)
        written[full_key] = value


def _set(cfg, full_key: str, value: Any) -> None:
    *parents, last = full_key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value

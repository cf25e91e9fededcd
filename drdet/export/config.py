"""What an exported file records besides its graph: the checkpoint's classes and the config
values baked into the graph, so that running it with a config that says otherwise is an error
naming the key instead of detections that silently ignore the config."""

from __future__ import annotations

import json
import os
from typing import Any

from drdet.utils.errors import UserValueError

EXPORT_SUFFIXES = (".onnx", ".pt2")
METADATA_KEY = "drdet"  # ONNX metadata_props key / .pt2 extra file name of the json record

# Keys whose values the exported graph holds (normalisation, padding, post-processing).
BAKED_KEYS = (
    "MODEL.META_ARCHITECTURE",
    "MODEL.NUM_CLASSES",
    "INPUT.PIXEL_MEAN",
    "INPUT.PIXEL_STD",
    "INPUT.TO_BGR255",
    "DATALOADER.SIZE_DIVISIBILITY",
    "TEST.DETECTIONS_PER_IMG",
)
# ... and these leaves of the detector's node (MODEL.FCOS.NMS_TH for FCOS; every node's when
# no node is named after MODEL.META_ARCHITECTURE).
BAKED_LEAVES = ("INFERENCE_TH", "PRE_NMS_TOP_N", "NMS_TH", "CLASS_SCORE_EXPONENT")


def export_suffix(path: str) -> str:
    """The suffix of ``path`` if it names an exported model (".onnx", ".pt2"), else ""."""
    suffix = os.path.splitext(path)[1].lower()
    return suffix if suffix in EXPORT_SUFFIXES else ""


def baked_values(cfg) -> dict[str, Any]:
    """{key: value} of the config values an exported graph holds, json-normalised."""
    values = {key: _get(cfg, key) for key in BAKED_KEYS}
    own = cfg.MODEL.META_ARCHITECTURE.upper()  # the detector's node (MODEL.FCOS), when so named
    nodes = [own] if own in cfg.MODEL else list(cfg.MODEL)
    for name in nodes:
        node = cfg.MODEL[name]
        for leaf in BAKED_LEAVES:
            if hasattr(node, "items") and leaf in node:
                values[f"MODEL.{name}.{leaf}"] = node[leaf]
    return json.loads(json.dumps(values))


def check_baked_values(recorded: dict[str, Any], cfg, path: str) -> None:
    """UserValueError naming every key whose value in ``cfg`` differs from the one the exported
    file ``path`` was made with (its graph holds the recorded value)."""
    current = baked_values(cfg)
    diffs = [
        f"{key} {current.get(key)!r} (exported with {value!r})"
        for key, value in recorded.items()
        if current.get(key) != value
    ]
    if diffs:
        raise UserValueError(
            f"exported model {path} holds other values than the config: "
            + "; ".join(diffs)
            + ". Run it with the config it was exported with, or export it again"
        )


def _get(cfg, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node

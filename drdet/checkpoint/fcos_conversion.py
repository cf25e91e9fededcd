"""torchvision ``fcos_resnet50_fpn`` state dict -> drdet FCOS names (used by
tools/convert_checkpoint.py).

Conventions of torchvision's FCOS that a drdet config must reproduce
(configs/torchvision/fcos_resnet50_fpn_torchvision.yaml):
- locations: torchvision builds one square anchor per cell, of side 8 ... 128 (P3-P7), and uses
  its centre: (s*j, s*i) with s = (padded image size) // (feature size) per axis, i.e. no half-
  stride offset (the FCOS authors' code uses s*j + s//2), and s differs from the level's stride
  on P6/P7 when the padded size is not a multiple of 128: MODEL.ANCHOR_GENERATOR.CONVENTION
  "torchvision" reproduces it.
- regression: torchvision's head outputs relu(x) per location and decodes it as distances
  times the anchor side (8 ... 128), i.e. regression normalised by the level's stride, with no
  learnt per-level scale; drdet's head computes relu(scale_l * x) * stride_l, so the converted
  file sets every scale to 1.
- level assignment: torchvision takes a location for a box when 4 s < max(l, t, r, b) < 8 s
  (both bounds excluded; 0 below P3, infinity above P7); drdet includes the bounds (the FCOS
  paper). torchvision breaks ties between boxes on 1e8 - area in float32, which cannot tell
  apart areas within a few px^2 of each other (it then takes the first box); drdet compares the
  areas exactly. Centre sampling (radius 1.5 strides) is the same. These matter for training
  only, not for the detections of converted weights.
- scores: sqrt(sigmoid(class) * sigmoid(centre-ness)) > 0.2, 1000 per level, class-wise NMS
  0.6, 100 per image, as drdet's FCOS defaults. torchvision keeps boxes that clipping to the
  image made empty; drdet drops them.
- labels: torchvision's K classification columns are labels 0..K-1; drdet's label = torchvision
  label + 1 (NUM_CLASSES = K + 1), or the selected columns (``class_columns``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from drdet.checkpoint.weights import (
    _select_class_columns,
    convert_torchvision_retinanet,
    strip_module_prefix,
)

StateDict = dict[str, torch.Tensor]

NUM_LEVELS = 5

_TOWER = re.compile(r"^head\.(classification|regression)_head\.conv\.(\d+)\.(weight|bias)$")
_HEAD_LAYERS = {
    "head.classification_head.cls_logits.": "head.cls_logits.",
    "head.regression_head.bbox_reg.": "head.bbox_pred.",
    "head.regression_head.bbox_ctrness.": "head.centerness.",
}


def is_torchvision_fcos(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` (a "module." prefix allowed) holds torchvision FCOS keys (its
    centre-ness layer ``head.regression_head.bbox_ctrness``)."""
    return any(
        k.startswith("head.regression_head.bbox_ctrness.") for k in strip_module_prefix(state)
    )


def convert_torchvision_fcos(
    state: Mapping[str, torch.Tensor], class_columns: Sequence[int] | None = None
) -> StateDict:
    """torchvision ``fcos_resnet50_fpn`` state dict -> drdet FCOS state dict.

    The backbone (ResNet body, FPN, P6/P7) is renamed as for torchvision's RetinaNet; the head's
    towers keep their layer indices (conv, GroupNorm, ReLU repeated); ``head.scales`` (5,) is set
    to ones. ``class_columns`` keeps only those torchvision labels, in that order (drdet label k
    is torchvision label class_columns[k - 1]). Unknown keys raise KeyError.
    """
    state = strip_module_prefix(state)
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    out: StateDict = OrderedDict(convert_torchvision_retinanet(backbone))
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        m = _TOWER.match(key)
        if m:
            tower = "cls_tower" if m.group(1) == "classification" else "bbox_tower"
            out[f"head.{tower}.{m.group(2)}.{m.group(3)}"] = value
            continue
        prefix = next((p for p in _HEAD_LAYERS if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"unexpected key in a torchvision FCOS state dict: {key}")
        out[_HEAD_LAYERS[prefix] + key[len(prefix) :]] = value
    if "head.cls_logits.weight" not in out:
        raise KeyError(
            "not a torchvision FCOS state dict: no head.classification_head.cls_logits.weight"
        )
    out["head.scales"] = torch.ones(NUM_LEVELS, dtype=out["head.cls_logits.weight"].dtype)
    if class_columns is not None:
        for name in ("head.cls_logits.weight", "head.cls_logits.bias"):
            out[name] = _select_class_columns(out[name], 1, class_columns)
    return out

"""The DR loss (Qian et al., CVPR 2020) as a classification loss: drdet.layers.dr_loss with one
group per image (the paper's Eq. 9) or one group for the whole per-process batch (the authors'
released code). Its config node MODEL.DR_LOSS, its check, and the setup it brings."""

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_loss_recipe
from drdet.layers import DRLossParams, dr_loss
from drdet.layers.dr_loss import InvalidDRLossParam
from drdet.modeling.registry import CLASSIFICATION_LOSSES
from drdet.utils.checks import require

# MODEL.DR_LOSS.GROUPING: the groups the loss is averaged over.
GROUPINGS = ("image", "batch")

# The paper's Eq. 6-9 (drdet/layers/dr_loss.py: DRLossParams).
_DR_LOSS = CN()
# Temperatures of the positive / negative distributions (lambda+ and lambda- of Eq. 6).
_DR_LOSS.POS_LAMBDA = 1.0
_DR_LOSS.NEG_LAMBDA = 0.1 / math.log(3.5)
# The paper's Table 1 parametrisation: lambda+ = 1 / ln(H_POS), lambda- = 0.1 / ln(H_NEG).
# 0 = not used (POS_LAMBDA / NEG_LAMBDA apply); a value > 1 overrides the matching lambda.
# See drdet.layers.DRLossParams.from_cfg.
_DR_LOSS.H_POS = 0.0
_DR_LOSS.H_NEG = 0.0
# Sharpness of the logistic smoothing (Eq. 8).
_DR_LOSS.L = 6.0
# The ranking margin gamma.
_DR_LOSS.MARGIN = 0.5
# Weight of the classification loss against the regression loss.
_DR_LOSS.TAU = 4.0
# Smoothing of the hinge: "logistic" (Eq. 8), "quadratic" (Eq. 7, uses RHO) or "hinge" (none).
_DR_LOSS.SMOOTHING = "logistic"
_DR_LOSS.RHO = 0.5
# "dr": rank E[negatives] against E[positives]; "negonly": against each positive (Table 3).
_DR_LOSS.PAIRING = "dr"
# "image": one loss per image, averaged over the batch (the paper's Eq. 9);
# "batch": one loss over all anchors of the per-GPU batch (the authors' released code).
_DR_LOSS.GROUPING = "image"
add_config_node("MODEL.DR_LOSS", _DR_LOSS)

# Dr. Retina's setup, as the authors' released configs: prior probability 0.5 (the sigmoid's
# default decision threshold, as the paper says), a matcher without an ignored band (FG 0.5 /
# BG 0.5), score threshold 0.2 (paper Table 5 compares thresholds) and NMS at 0.5. Each
# detector takes the fields that apply to it (drdet/config/setups.py).
register_loss_recipe(
    "DR",
    prior_prob=0.5,
    fg_iou_threshold=0.5,
    bg_iou_threshold=0.5,
    score_threshold=0.2,
    nms_threshold=0.5,
)


class DRClassificationLoss:
    """tau times the mean over groups of the DR loss; the normalizer is not used (the loss is a
    mean over groups by construction).

    Args:
        params: the hyperparameters of :func:`drdet.layers.dr_loss`, as DRLossParams or as a
            mapping of its fields.
        grouping: "image" (one group per image) or "batch" (one group for all rows).
    """

    def __init__(self, params: DRLossParams | Mapping[str, Any], grouping: str = "image") -> None:
        if grouping not in GROUPINGS:
            raise ValueError(f"DR loss grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.params = params if isinstance(params, DRLossParams) else DRLossParams(**params)
        self.grouping = grouping

    def __call__(self, logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor:
        """logits (B, A, C), labels (B, A) in {-1, 0, 1..C}; normalizer unused."""
        num_images, num_rows, num_classes = logits.shape
        flat_logits, flat_labels = logits.reshape(-1, num_classes), labels.reshape(-1)
        if self.grouping == "batch":
            return dr_loss(flat_logits, flat_labels, params=self.params)
        group_ids = torch.arange(num_images, device=logits.device).repeat_interleave(num_rows)
        return dr_loss(
            flat_logits, flat_labels, group_ids, num_groups=num_images, params=self.params
        )

    def __repr__(self) -> str:
        return f"DRClassificationLoss(grouping={self.grouping!r}, {self.params})"


def dr_loss_lambdas(cfg) -> tuple[float, float]:
    """(lambda+, lambda-) of the DR loss from ``cfg.MODEL.DR_LOSS`` (the H_POS / H_NEG mapping
    of :meth:`drdet.layers.DRLossParams.from_cfg`)."""
    params = DRLossParams.from_cfg(cfg)
    return params.pos_lambda, params.neg_lambda


def check_dr_loss_cfg(cfg) -> None:
    """MODEL.DR_LOSS through DRLossParams' own validation, its error naming the config key."""
    try:
        DRLossParams.from_cfg(cfg)
    except InvalidDRLossParam as err:
        require(False, err.config_key, err.value, err.what)
    grouping = cfg.MODEL.DR_LOSS.GROUPING
    require(
        grouping in GROUPINGS,
        "MODEL.DR_LOSS.GROUPING",
        grouping,
        f"must be one of {list(GROUPINGS)}",
    )


@CLASSIFICATION_LOSSES.register("DR", check=check_dr_loss_cfg)
def build_dr_loss(cfg) -> DRClassificationLoss:
    """From MODEL.DR_LOSS."""
    return DRClassificationLoss(DRLossParams.from_cfg(cfg), cfg.MODEL.DR_LOSS.GROUPING)

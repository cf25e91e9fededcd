"""The DR loss (Qian et al., CVPR 2020) as a classification loss: drdet.layers.dr_loss with one
group per image (the paper's Eq. 9) or one group for the whole per-process batch (the authors'
released code)."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from drdet.layers import DRLossParams, dr_loss
from drdet.modeling.losses.setup import register_loss_setup
from drdet.modeling.registry import CLASSIFICATION_LOSSES

# MODEL.DR_LOSS.GROUPING: the groups the loss is averaged over.
GROUPINGS = ("image", "batch")

# Dr. Retina's setup, as the authors' released configs: prior probability 0.5 (the sigmoid's
# default decision threshold, as the paper says), a matcher without an ignored band (FG 0.5 /
# BG 0.5), score threshold 0.2 (paper Table 5 compares thresholds) and NMS at 0.5.
register_loss_setup(
    "DR",
    "RetinaNet",
    {
        "MODEL.RETINANET.PRIOR_PROB": 0.5,
        "MODEL.RETINANET.FG_IOU_THRESHOLD": 0.5,
        "MODEL.RETINANET.BG_IOU_THRESHOLD": 0.5,
        "MODEL.RETINANET.INFERENCE_TH": 0.2,
        "MODEL.RETINANET.NMS_TH": 0.5,
    },
)
# DR-FCOS: the prior 0.5 carries over from Dr. Retina (measured on the synthetic set: prior 0.01
# learnt far less; configs/fcos/README.md). FCOS has no matcher; its score threshold (0.2 on
# sqrt(class score * centre-ness)) is the same for both losses and stays in MODEL.FCOS.
register_loss_setup("DR", "FCOS", {"MODEL.FCOS.PRIOR_PROB": 0.5})


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


@CLASSIFICATION_LOSSES.register("DR")
def build_dr_loss(cfg) -> DRClassificationLoss:
    """From MODEL.DR_LOSS."""
    return DRClassificationLoss(DRLossParams.from_cfg(cfg), cfg.MODEL.DR_LOSS.GROUPING)

"""The DR loss (Qian et al., CVPR 2020) as a classification loss: drdet.layers.dr_loss with one
group per image (the paper's Eq. 9) or one group for the whole per-process batch (the authors'
released code)."""

import math
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from drdet.layers import dr_loss
from drdet.modeling.registry import CLASSIFICATION_LOSSES

GROUPINGS = ("image", "batch")


class DRClassificationLoss:
    """tau times the mean over groups of the DR loss; the normalizer is not used (the loss is a
    mean over groups by construction).

    Args:
        params: keyword arguments of :func:`drdet.layers.dr_loss` (pos_lambda, neg_lambda, L,
            margin, tau, smoothing, rho, pairing).
        grouping: "image" (one group per image) or "batch" (one group for all rows).
    """

    def __init__(self, params: Dict[str, Any], grouping: str = "image") -> None:
        if grouping not in GROUPINGS:
            raise ValueError(f"DR loss grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.params = dict(params)
        self.grouping = grouping

    def __call__(self, logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor:
        """logits (B, A, C), labels (B, A) in {-1, 0, 1..C}; normalizer unused."""
        num_images, num_rows, num_classes = logits.shape
        flat_logits, flat_labels = logits.reshape(-1, num_classes), labels.reshape(-1)
        if self.grouping == "batch":
            return dr_loss(flat_logits, flat_labels, **self.params)
        group_ids = torch.arange(num_images, device=logits.device).repeat_interleave(num_rows)
        return dr_loss(flat_logits, flat_labels, group_ids, num_groups=num_images, **self.params)

    def __repr__(self) -> str:
        return f"DRClassificationLoss(grouping={self.grouping!r}, {self.params})"


def dr_loss_lambdas(cfg) -> Tuple[float, float]:
    """(lambda+, lambda-) of the DR loss from ``cfg.MODEL.DR_LOSS``.

    The paper (Sec. 4.2, Table 1) tunes lambda+ = 1 / ln(h+) and lambda- = 0.1 / ln(h-), i.e. the
    KL regulariser in base h with lambda+ = 1, lambda- = 0.1; the released code's defaults are
    h+ = e (lambda+ = 1) and h- = 3.5 (lambda- = 0.1 / ln 3.5 = 0.0798). ``H_POS`` / ``H_NEG``
    > 0 take precedence over ``POS_LAMBDA`` / ``NEG_LAMBDA``; 0 leaves those in force.
    """
    d = cfg.MODEL.DR_LOSS
    pos = 1.0 / math.log(d.H_POS) if d.H_POS > 0 else d.POS_LAMBDA
    neg = 0.1 / math.log(d.H_NEG) if d.H_NEG > 0 else d.NEG_LAMBDA
    return float(pos), float(neg)


def dr_loss_params(cfg) -> Dict[str, Any]:
    """dr_loss keyword arguments from cfg.MODEL.DR_LOSS (lambdas through dr_loss_lambdas)."""
    d = cfg.MODEL.DR_LOSS
    pos_lambda, neg_lambda = dr_loss_lambdas(cfg)
    return dict(pos_lambda=pos_lambda, neg_lambda=neg_lambda, L=d.L, margin=d.MARGIN, tau=d.TAU,
                smoothing=d.SMOOTHING, rho=d.RHO, pairing=d.PAIRING)


@CLASSIFICATION_LOSSES.register("DR")
def build_dr_loss(cfg) -> DRClassificationLoss:
    """From MODEL.DR_LOSS."""
    return DRClassificationLoss(dr_loss_params(cfg), cfg.MODEL.DR_LOSS.GROUPING)

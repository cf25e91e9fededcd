"""ATSS training losses for a whole batch: the configured classification loss (focal, DR or any
registered one, ``MODEL.ATSS.LOSS_TYPE``) over every anchor, a GIoU loss on the decoded boxes of
the positive anchors weighted by their centre-ness targets, and binary cross-entropy on their
centre-ness.

Labels per anchor: 0 background, 1..C the class of its box (drdet.modeling.atss.assigner); ATSS
ignores no anchor, so no label is -1. With the DR loss, the positives of an image are the
entries (a, c) of its positive anchors a with the class c of their box, its negatives every other
(anchor, class) entry; one DR loss per image with ``MODEL.DR_LOSS.GROUPING "image"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drdet.modeling.atss.assigner import atss_assign, box_centres
from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DenseOutputs
from drdet.modeling.dense.losses import DenseLoss, centerness_losses, per_rank_average
from drdet.modeling.dense.targets import PaddedTargets, matched_targets
from drdet.modeling.losses import ClassificationLoss


def anchor_distances(anchors: Tensor, boxes: Tensor) -> Tensor:
    """(N, 4) (l, t, r, b) distances from the centres of (N, 4) anchors to the sides of their
    (N, 4) boxes, pixels (all > 0 for the positives of ATSS, whose centres lie inside)."""
    centres = box_centres(anchors)
    return torch.cat([centres - boxes[:, :2], boxes[:, 2:] - centres], dim=1)


class ATSSLossComputation(DenseLoss):
    """Assigns anchors to boxes and computes ``{"loss_cls", "loss_reg", "loss_centerness"}``.

    Args:
        box_coder: the deltas' coding (drdet.modeling.box_coder.BoxCoder).
        num_classes: foreground classes C.
        cls_loss: ``cls_loss(logits (B, A, C), labels (B, A), normalizer)``; its normalizer is
            the number of positive anchors averaged over the ranks, at least 1 (the DR loss
            ignores it).
        topk: candidates per box and level (drdet.modeling.atss.assigner).
        reg_loss_weight: factor of the box loss.
    The box loss is ``reg_loss_weight`` x the sum over the positives of centre-ness target x
    (1 - GIoU) divided by the sum of those targets (averaged over the ranks); the centre-ness
    loss is the sum of the positives' binary cross-entropies divided by the number of positives
    (averaged over the ranks, at least 1). Both are 0 for a batch without boxes.
    """

    name = "ATSS"

    def __init__(
        self,
        box_coder: BoxCoder,
        num_classes: int,
        cls_loss: ClassificationLoss,
        topk: int = 9,
        reg_loss_weight: float = 2.0,
    ):
        if topk < 1:
            raise ValueError(f"ATSS: topk must be >= 1, got {topk}")
        super().__init__(num_classes, cls_loss)
        self.box_coder = box_coder
        self.topk = topk
        self.reg_loss_weight = reg_loss_weight

    def assign(self, anchors: list[Tensor], gt: PaddedTargets) -> dict[str, Tensor]:
        """ATSS's assignment (drdet.modeling.atss.assigner) of the batch: "labels" (B, A) int64
        in 0..C; "positives" (P, 2); "boxes" (P, 4) float the positives' boxes; "anchors"
        (A, 4) the anchors concatenated."""
        gt_boxes, gt_labels, gt_valid = gt
        all_anchors = torch.cat(anchors)
        matches = atss_assign(anchors, gt_boxes, gt_valid, self.topk)
        labels, positives, boxes = matched_targets(matches, gt_boxes, gt_labels)
        return {"labels": labels, "positives": positives, "boxes": boxes, "anchors": all_anchors}

    def losses(
        self, logits: Tensor, outputs: DenseOutputs, t: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """{"loss_cls", "loss_reg", "loss_centerness"}; the head's box_regression are deltas
        against the anchors."""
        if outputs.centerness is None:
            raise ValueError("ATSS: the head gave no centre-ness")
        num_pos = per_rank_average(t["positives"].shape[0], logits).clamp(min=1.0)
        loss_cls = self.cls_loss(logits, t["labels"], num_pos)

        image_idx, anchor_idx = t["positives"].unbind(1)
        pos_anchors = t["anchors"][anchor_idx]
        deltas = torch.cat(outputs.box_regression, dim=1)[image_idx, anchor_idx].float()
        distances = anchor_distances(pos_anchors, t["boxes"])
        ctr_logits = torch.cat(outputs.centerness, dim=1)[image_idx, anchor_idx].float()
        pred_boxes = self.box_coder.decode(deltas, pos_anchors)
        loss_reg, loss_ctr = centerness_losses(
            pred_boxes, t["boxes"], distances, ctr_logits, num_pos
        )
        return {
            "loss_cls": loss_cls,
            "loss_reg": self.reg_loss_weight * loss_reg,
            "loss_centerness": loss_ctr,
        }

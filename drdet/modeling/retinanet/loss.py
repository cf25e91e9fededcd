"""RetinaNet training losses for a whole batch at once: the configured classification loss
(drdet.modeling.losses: DR, focal or any registered one) for the classes, smooth-L1 for the boxes.

Per anchor label: 0 background, 1..C the matched box's class, -1 ignored (IoU between the
matcher's thresholds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DenseLoss, DenseOutputs, PaddedTargets, per_rank_average
from drdet.modeling.losses import ClassificationLoss
from drdet.modeling.matcher import Matcher
from drdet.structures.boxes import pairwise_iou


class RetinaNetLossComputation(DenseLoss):
    """Matches anchors to targets and computes ``{"loss_cls", "loss_reg"}``.

    Args:
        matcher, box_coder: see drdet.modeling.matcher / box_coder.
        num_classes: foreground classes C.
        cls_loss: the classification loss, ``cls_loss(logits (B, A, C), labels (B, A),
            normalizer)`` (drdet.modeling.losses: "DR", "FOCAL" or any registered one). Its
            normalizer is the number of positives plus the number of images, as
            maskrcnn-benchmark's focal loss takes it (finite without positives); under
            torch.distributed both counts are averaged over the ranks (per_rank_average).
        reg_beta: smooth-L1 beta; the regression loss is summed over positive anchors and
            divided by max(1, number of positives in the batch * reg_norm).
        reg_norm: maskrcnn-benchmark's MODEL.RETINANET.BBOX_REG_WEIGHT (4.0: the sum over the four
            coordinates becomes their mean).

    Anchors crossing the image border are kept, as in maskrcnn-benchmark's RetinaNet (whose
    loss discards only the anchors between the matcher's thresholds).
    """

    name = "RetinaNet"

    def __init__(
        self,
        matcher: Matcher,
        box_coder: BoxCoder,
        num_classes: int,
        cls_loss: ClassificationLoss,
        reg_beta: float = 0.11,
        reg_norm: float = 4.0,
    ):
        super().__init__(num_classes, cls_loss)
        self.matcher = matcher
        self.box_coder = box_coder
        self.reg_beta = reg_beta
        self.reg_norm = reg_norm

    def assign(self, anchors: list[Tensor], gt: PaddedTargets) -> dict[str, Tensor]:
        """The IoU matcher's assignment: "labels" (B, A) int64 in {-1, 0, 1..C}; "positives"
        (P, 2); "regression_targets" (P, 4) float the encoded deltas of the positives' boxes."""
        gt_boxes, gt_labels, gt_valid = gt
        anchors_all = torch.cat(anchors)
        num_images = gt_boxes.shape[0]
        if gt_boxes.shape[1] == 0:
            labels = torch.zeros(
                num_images, anchors_all.shape[0], dtype=torch.int64, device=anchors_all.device
            )
            matches = torch.full_like(labels, Matcher.BELOW_LOW_THRESHOLD)
        else:
            matches = self.matcher(pairwise_iou(gt_boxes, anchors_all), gt_valid)
            labels = torch.gather(gt_labels, 1, matches.clamp(min=0))
            labels = labels.masked_fill(matches == Matcher.BELOW_LOW_THRESHOLD, 0)
            labels = labels.masked_fill(matches == Matcher.BETWEEN_THRESHOLDS, -1)
        positives = (labels > 0).nonzero()
        image_idx, anchor_idx = positives[:, 0], positives[:, 1]
        matched_boxes = gt_boxes[image_idx, matches[image_idx, anchor_idx]]
        regression_targets = self.box_coder.encode(matched_boxes, anchors_all[anchor_idx])
        return {"labels": labels, "positives": positives, "regression_targets": regression_targets}

    def losses(
        self, logits: Tensor, outputs: DenseOutputs, t: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """{"loss_cls", "loss_reg"}: the classification loss normalised by the positives plus
        the images, smooth-L1 on the positives' deltas."""
        deltas = torch.cat(outputs.box_regression, dim=1)
        num_images = logits.shape[0]
        labels, positives = t["labels"], t["positives"]
        num_pos = per_rank_average(positives.shape[0], logits)
        num_norm = per_rank_average(num_images, logits)

        loss_cls = self.cls_loss(logits, labels, num_pos + num_norm)

        predicted = deltas[positives[:, 0], positives[:, 1]]
        loss_reg = F.smooth_l1_loss(
            predicted.float(), t["regression_targets"].float(), beta=self.reg_beta, reduction="sum"
        ) / (num_pos * self.reg_norm).clamp(min=1.0)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg}

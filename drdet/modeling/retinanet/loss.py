"""RetinaNet training losses for a whole batch at once: the configured classification loss
(drdet.modeling.losses: DR, focal or any registered one) for the classes, smooth-L1 for the boxes.

Per anchor label: 0 background, 1..C the matched box's class, -1 ignored (IoU between the
matcher's thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DenseOutputs, pad_targets, per_rank_average
from drdet.modeling.losses import ClassificationLoss
from drdet.modeling.matcher import Matcher
from drdet.structures.boxes import pairwise_iou


class RetinaNetLossComputation:
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

    def __init__(
        self,
        matcher: Matcher,
        box_coder: BoxCoder,
        num_classes: int,
        cls_loss: ClassificationLoss,
        reg_beta: float = 0.11,
        reg_norm: float = 4.0,
    ):
        if not callable(cls_loss):
            raise TypeError(f"cls_loss must be callable, got {type(cls_loss).__name__}")
        self.matcher = matcher
        self.box_coder = box_coder
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.reg_beta = reg_beta
        self.reg_norm = reg_norm

    def prepare_targets(
        self,
        anchors: Tensor,
        targets: Sequence[dict[str, Tensor]],
        check_targets: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Labels and box-regression targets of every anchor of every image.

        Args:
            anchors: (A, 4) float, all levels concatenated, shared by the images.
            targets: B dicts with "boxes" (K_i, 4) float x1y1x2y2 pixels and "labels" (K_i,)
                int64 in 1..C (checked, naming the image, unless ``check_targets`` is False).
        Returns:
            labels: (B, A) int64 in {-1, 0, 1..C}.
            positives: (P, 2) int64 (image, anchor) index of the anchors with label > 0.
            regression_targets: (P, 4) float encoded deltas of those anchors' boxes.
        """
        gt_boxes, gt_labels, gt_valid = pad_targets(
            targets, self.num_classes, anchors.device, check=check_targets
        )
        num_images = len(targets)
        if gt_boxes.shape[1] == 0:
            labels = torch.zeros(
                num_images, anchors.shape[0], dtype=torch.int64, device=anchors.device
            )
            matches = torch.full_like(labels, Matcher.BELOW_LOW_THRESHOLD)
        else:
            matches = self.matcher(pairwise_iou(gt_boxes, anchors), gt_valid)
            labels = torch.gather(gt_labels, 1, matches.clamp(min=0))
            labels = labels.masked_fill(matches == Matcher.BELOW_LOW_THRESHOLD, 0)
            labels = labels.masked_fill(matches == Matcher.BETWEEN_THRESHOLDS, -1)
        positives = (labels > 0).nonzero()
        image_idx, anchor_idx = positives[:, 0], positives[:, 1]
        matched_boxes = gt_boxes[image_idx, matches[image_idx, anchor_idx]]
        regression_targets = self.box_coder.encode(matched_boxes, anchors[anchor_idx])
        return labels, positives, regression_targets

    def labels(self, anchors: list[Tensor], targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """(B, A) int64 label of every anchor (per-level ``anchors``), as the loss sees it."""
        return self.prepare_targets(torch.cat(anchors), targets)[0]

    def __call__(
        self,
        anchors: list[Tensor],
        outputs: DenseOutputs,
        targets: Sequence[dict[str, Tensor]],
        check_targets: bool = True,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            anchors: per level (A_l, 4) float.
            outputs: the head's per level ``cls_logits`` (B, A_l, C) and ``box_regression``
                (B, A_l, 4).
            targets: B target dicts (see prepare_targets).
        Returns:
            {"loss_cls": scalar, "loss_reg": scalar}.
        """
        anchors_all = torch.cat(anchors)
        logits = torch.cat(outputs.cls_logits, dim=1)
        deltas = torch.cat(outputs.box_regression, dim=1)
        num_images, num_anchors, num_classes = logits.shape
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} target dicts for {num_images} images")
        if num_anchors != anchors_all.shape[0] or num_classes != self.num_classes:
            raise ValueError(
                f"predictions (B, {num_anchors}, {num_classes}) do not match "
                f"{anchors_all.shape[0]} anchors and {self.num_classes} classes"
            )
        labels, positives, regression_targets = self.prepare_targets(
            anchors_all, targets, check_targets
        )
        num_pos = per_rank_average(positives.shape[0], logits)
        num_norm = per_rank_average(num_images, logits)

        loss_cls = self.cls_loss(logits, labels, num_pos + num_norm)

        predicted = deltas[positives[:, 0], positives[:, 1]]
        loss_reg = F.smooth_l1_loss(
            predicted.float(), regression_targets.float(), beta=self.reg_beta, reduction="sum"
        ) / (num_pos * self.reg_norm).clamp(min=1.0)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg}

"""FCOS training losses for a whole batch: the configured classification loss (focal, DR or any
registered one, ``MODEL.FCOS.LOSS_TYPE``) over every location, an IoU or GIoU loss on the boxes
of the positive locations, and binary cross-entropy on their centre-ness.

Labels per location: 0 background, 1..C the class of its box (drdet.modeling.fcos.targets);
FCOS ignores no location, so no label is -1.

The DR loss on FCOS. FCOS has no anchors: the DR loss ranks the (location, class) entries of
each image. Its positives are the entries (l, c) of the positive locations l with the class c
of their box (one per positive location); its negatives are every other entry: all C classes
of the background locations and the C - 1 other classes of the positive ones. With
``MODEL.DR_LOSS.GROUPING "image"`` it is one DR loss per image, averaged over the batch (the
paper's Eq. 9); the normalizer is not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from drdet.modeling.dense import REG_LOSSES, DenseOutputs
from drdet.modeling.dense.losses import DenseLoss, centerness_losses, per_rank_average
from drdet.modeling.dense.targets import PaddedTargets, matched_targets
from drdet.modeling.fcos.box_coder import DistanceCoder, anchor_centres
from drdet.modeling.fcos.targets import assign_locations
from drdet.modeling.losses import ClassificationLoss


class FCOSLossComputation(DenseLoss):
    """Assigns locations to boxes and computes ``{"loss_cls", "loss_reg", "loss_centerness"}``.

    Args:
        num_classes: foreground classes C.
        cls_loss: ``cls_loss(logits (B, L, C), labels (B, L), normalizer)``; its normalizer is
            the number of positive locations averaged over the ranks, at least 1 (the FCOS paper,
            torchvision); the DR loss ignores it.
        strides: per level, its stride (the size of its locations) in pixels.
        ranges: per level (lo, hi) of max(l, t, r, b) (drdet.modeling.fcos.targets.level_ranges).
        center_sampling_radius: in strides; 0: off.
        ignore_outside_center: label -1 (left out of the classification loss) the locations
            that would be positives of a box without centre sampling but are not with it; else
            they are background.
        reg_loss: "giou" or "iou" (see :func:`drdet.modeling.dense.iou_loss`).
        centerness_weighted_reg: weight each positive's box loss by its centre-ness target and
            divide by their sum (averaged over the ranks) instead of by the positives' number.
    The box and centre-ness losses are sums over the positive locations divided by the number
    of positives (averaged over the ranks, at least 1): 0 for a batch without boxes.
    """

    name = "FCOS"

    def __init__(
        self,
        num_classes: int,
        cls_loss: ClassificationLoss,
        strides: Sequence[int],
        ranges: Sequence[Sequence[float]],
        center_sampling_radius: float = 1.5,
        ignore_outside_center: bool = False,
        reg_loss: str = "giou",
        centerness_weighted_reg: bool = False,
    ):
        if reg_loss not in REG_LOSSES:
            raise ValueError(f"FCOS box loss must be one of {REG_LOSSES}, got {reg_loss!r}")
        if center_sampling_radius < 0:
            raise ValueError(f"center_sampling_radius must be >= 0, got {center_sampling_radius}")
        if len(strides) != len(ranges):
            raise ValueError(f"FCOS: {len(strides)} strides for {len(ranges)} level ranges")
        super().__init__(num_classes, cls_loss)
        self.strides = [int(s) for s in strides]
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.center_sampling_radius = center_sampling_radius
        self.ignore_outside_center = ignore_outside_center
        self.reg_loss = reg_loss
        self.centerness_weighted_reg = centerness_weighted_reg

    def assign(self, anchors: list[Tensor], gt: PaddedTargets) -> dict[str, Tensor]:
        """FCOS's assignment of the locations (the centres of ``anchors``; see
        drdet.modeling.fcos.targets): "labels" (B, L) int64 in 0..C; "positives" (P, 2);
        "boxes" (P, 4) float their boxes; "distances" (P, 4) their (l, t, r, b) to those boxes;
        "anchors" (L, 4) the anchors concatenated."""
        gt_boxes, gt_labels, gt_valid = gt
        if len(anchors) != len(self.ranges):
            raise ValueError(f"FCOS: {len(anchors)} levels of locations, {len(self.ranges)} ranges")
        device = anchors[0].device
        all_anchors = torch.cat(anchors)
        sizes = torch.cat(
            [
                torch.full((a.shape[0],), float(s), device=device)
                for a, s in zip(anchors, self.strides)
            ]
        )
        ranges = torch.cat(
            [
                torch.tensor([r], device=device).expand(a.shape[0], 2)
                for a, r in zip(anchors, self.ranges)
            ]
        )
        points = anchor_centres(all_anchors)
        matches = assign_locations(
            points, sizes, ranges, gt_boxes, gt_valid, self.center_sampling_radius
        )
        labels, positives, boxes = matched_targets(matches, gt_boxes, gt_labels)
        if self.ignore_outside_center and self.center_sampling_radius > 0:
            # the same assignment without centre sampling: its positives that are not ours
            inside = assign_locations(points, sizes, ranges, gt_boxes, gt_valid)
            labels = labels.masked_fill((matches < 0) & (inside >= 0), -1)
        distances = DistanceCoder.encode(boxes, all_anchors[positives[:, 1]])
        return {
            "labels": labels,
            "positives": positives,
            "boxes": boxes,
            "distances": distances,
            "anchors": all_anchors,
        }

    def losses(
        self, logits: Tensor, outputs: DenseOutputs, t: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """{"loss_cls", "loss_reg", "loss_centerness"}; the head's box_regression are (l, t, r, b)
        distances in pixels."""
        assert outputs.centerness is not None, "FCOS needs the head's centre-ness"
        num_pos = per_rank_average(t["positives"].shape[0], logits).clamp(min=1.0)
        loss_cls = self.cls_loss(logits, t["labels"], num_pos)

        image_idx, point_idx = t["positives"].unbind(1)
        pred = torch.cat(outputs.box_regression, dim=1)[image_idx, point_idx].float()
        pred_boxes = DistanceCoder.decode(pred, t["anchors"][point_idx])
        ctr_logits = torch.cat(outputs.centerness, dim=1)[image_idx, point_idx].float()
        loss_reg, loss_ctr = centerness_losses(
            pred_boxes,
            t["boxes"],
            t["distances"],
            ctr_logits,
            num_pos,
            self.reg_loss,
            self.centerness_weighted_reg,
        )
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr}

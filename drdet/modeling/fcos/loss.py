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
import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.dense import (
    REG_LOSSES,
    DenseOutputs,
    centerness_targets,
    iou_loss,
    pad_targets,
    per_rank_average,
)
from drdet.modeling.fcos.box_coder import DistanceCoder, anchor_centres
from drdet.modeling.fcos.targets import assign_locations
from drdet.modeling.losses import ClassificationLoss


class FCOSLossComputation:
    """Assigns locations to boxes and computes ``{"loss_cls", "loss_reg", "loss_centerness"}``.

    Args:
        num_classes: foreground classes C.
        cls_loss: ``cls_loss(logits (B, L, C), labels (B, L), normalizer)``; its normalizer is
            the number of positive locations averaged over the ranks, at least 1 (the FCOS paper,
            torchvision); the DR loss ignores it.
        strides: per level, its stride (the size of its locations) in pixels.
        ranges: per level (lo, hi) of max(l, t, r, b) (drdet.modeling.fcos.targets.level_ranges).
        center_sampling_radius: in strides; 0: off.
        reg_loss: "giou" or "iou" (see :func:`drdet.modeling.dense.iou_loss`).
        centerness_weighted_reg: weight each positive's box loss by its centre-ness target and
            divide by their sum (averaged over the ranks) instead of by the positives' number.
    The box and centre-ness losses are sums over the positive locations divided by the number
    of positives (averaged over the ranks, at least 1): 0 for a batch without boxes.
    """

    def __init__(
        self,
        num_classes: int,
        cls_loss: ClassificationLoss,
        strides: Sequence[int],
        ranges: Sequence[Sequence[float]],
        center_sampling_radius: float = 1.5,
        reg_loss: str = "giou",
        centerness_weighted_reg: bool = False,
    ):
        if reg_loss not in REG_LOSSES:
            raise ValueError(f"FCOS box loss must be one of {REG_LOSSES}, got {reg_loss!r}")
        if center_sampling_radius < 0:
            raise ValueError(f"center_sampling_radius must be >= 0, got {center_sampling_radius}")
        if len(strides) != len(ranges):
            raise ValueError(f"FCOS: {len(strides)} strides for {len(ranges)} level ranges")
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.strides = [int(s) for s in strides]
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.center_sampling_radius = center_sampling_radius
        self.reg_loss = reg_loss
        self.centerness_weighted_reg = centerness_weighted_reg

    def prepare_targets(
        self,
        anchors: list[Tensor],
        targets: Sequence[dict[str, Tensor]],
        check_targets: bool = True,
    ) -> dict[str, Tensor]:
        """Labels and box targets of every location of every image.

        Args:
            anchors: per level (L_l, 4) float, the anchors whose centres are the locations.
            targets: B dicts, "boxes" (K_i, 4) float x1y1x2y2 pixels, "labels" (K_i,) in 1..C
                (checked, naming the image, unless ``check_targets`` is False).
        Returns:
            "labels": (B, L) int64 in 0..C; "positives": (P, 2) int64 (image, location) of the
            locations with label > 0; "boxes": (P, 4) float their boxes; "distances": (P, 4)
            their (l, t, r, b) to those boxes; "anchors": (L, 4) the anchors concatenated.
        """
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
        gt_boxes, gt_labels, gt_valid = pad_targets(
            targets, self.num_classes, device, check=check_targets
        )
        matches = assign_locations(
            anchor_centres(all_anchors),
            sizes,
            ranges,
            gt_boxes,
            gt_valid,
            self.center_sampling_radius,
        )
        labels = (
            torch.gather(gt_labels, 1, matches.clamp(min=0))
            if gt_labels.shape[1]
            else torch.zeros_like(matches)
        )
        labels = labels.masked_fill(matches < 0, 0)
        positives = (labels > 0).nonzero()
        image_idx, point_idx = positives.unbind(1)
        boxes = gt_boxes[image_idx, matches[image_idx, point_idx]]
        distances = DistanceCoder.encode(boxes, all_anchors[point_idx])
        return {
            "labels": labels,
            "positives": positives,
            "boxes": boxes,
            "distances": distances,
            "anchors": all_anchors,
        }

    def labels(self, anchors: list[Tensor], targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """(B, L) int64 label of every location, as the classification loss sees it."""
        return self.prepare_targets(anchors, targets)["labels"]

    def __call__(
        self,
        anchors: list[Tensor],
        outputs: DenseOutputs,
        targets: Sequence[dict[str, Tensor]],
        check_targets: bool = True,
    ) -> dict[str, Tensor]:
        """Losses of a batch: per-level ``anchors`` (L_l, 4) (the locations' anchors), the
        head's ``outputs`` (cls_logits (B, L_l, C), box_regression (B, L_l, 4) distances in
        pixels, centerness (B, L_l) logits) and B target dicts (see prepare_targets).
        Returns {"loss_cls", "loss_reg", "loss_centerness"}: scalars."""
        assert outputs.centerness is not None, "FCOS needs the head's centre-ness"
        logits = torch.cat(outputs.cls_logits, dim=1)
        num_images, num_points, num_classes = logits.shape
        if len(targets) != num_images:
            raise ValueError(f"FCOS: got {len(targets)} target dicts for {num_images} images")
        if num_classes != self.num_classes:
            raise ValueError(f"FCOS: {num_classes} class logits for {self.num_classes} classes")
        t = self.prepare_targets(anchors, targets, check_targets)
        if t["labels"].shape[1] != num_points:
            raise ValueError(f"FCOS: {num_points} predictions for {t['labels'].shape[1]} locations")
        num_pos = per_rank_average(t["positives"].shape[0], logits).clamp(min=1.0)
        loss_cls = self.cls_loss(logits, t["labels"], num_pos)

        image_idx, point_idx = t["positives"].unbind(1)
        pred = torch.cat(outputs.box_regression, dim=1)[image_idx, point_idx].float()
        pred_boxes = DistanceCoder.decode(pred, t["anchors"][point_idx])
        box_loss = iou_loss(pred_boxes, t["boxes"], self.reg_loss)
        ctr_target = centerness_targets(t["distances"])
        if self.centerness_weighted_reg:
            weight_sum = per_rank_average(float(ctr_target.sum()), logits).clamp(min=1e-6)
            loss_reg = (box_loss * ctr_target).sum() / weight_sum
        else:
            loss_reg = box_loss.sum() / num_pos
        ctr_logits = torch.cat(outputs.centerness, dim=1)[image_idx, point_idx].float()
        loss_ctr = (
            F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="sum") / num_pos
        )
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr}

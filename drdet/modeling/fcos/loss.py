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

from drdet.modeling.fcos.targets import (
    assign_locations,
    centerness_targets,
    level_ranges,
)
from drdet.modeling.losses import ClassificationLoss, build_classification_loss
from drdet.modeling.registry import CLASSIFICATION_LOSSES
from drdet.modeling.retinanet.loss import RetinaNetLossComputation, _pad_targets

CLASSIFICATION_LOSSES.add_config_key("MODEL.FCOS.LOSS_TYPE")

REG_LOSSES = ("giou", "iou")


def iou_loss(pred: Tensor, target: Tensor, kind: str = "giou", eps: float = 1e-7) -> Tensor:
    """Per-pair box loss of boxes ``pred`` and ``target`` ((N, 4) float x1y1x2y2 pixels, pair i
    = row i): "giou" 1 - GIoU (in [0, 2]) or "iou" -ln(IoU) (IoU clamped at ``eps``). -> (N,)."""
    if kind not in REG_LOSSES:
        raise ValueError(f"box loss must be one of {REG_LOSSES}, got {kind!r}")
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(dim=1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return -iou.clamp(min=eps).log()
    hull = (
        (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2]))
        .clamp(min=0)
        .prod(dim=1)
    )
    return 1.0 - iou + (hull - union) / (hull + eps)


def locations_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Boxes (N, 4) x1y1x2y2 from locations (N, 2) (x, y) and distances (N, 4) (l, t, r, b)."""
    return torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)


class FCOSLossComputation:
    """Assigns locations to boxes and computes ``{"loss_cls", "loss_reg", "loss_centerness"}``.

    Args:
        num_classes: foreground classes C.
        cls_loss: ``cls_loss(logits (B, L, C), labels (B, L), normalizer)``; its normalizer is
            the number of positive locations averaged over the ranks, at least 1 (the FCOS paper,
            torchvision); the DR loss ignores it.
        ranges: per level (lo, hi) of max(l, t, r, b) (drdet.modeling.fcos.targets.level_ranges).
        center_sampling_radius: in strides; 0: off.
        reg_loss: "giou" or "iou" (see :func:`iou_loss`).
        centerness_weighted_reg: weight each positive's box loss by its centre-ness target and
            divide by their sum (averaged over the ranks) instead of by the positives' number.
    The box and centre-ness losses are sums over the positive locations divided by the number
    of positives (averaged over the ranks, at least 1): 0 for a batch without boxes.
    """

    def __init__(
        self,
        num_classes: int,
        cls_loss: ClassificationLoss,
        ranges: Sequence[Sequence[float]],
        center_sampling_radius: float = 1.5,
        reg_loss: str = "giou",
        centerness_weighted_reg: bool = False,
    ):
        if reg_loss not in REG_LOSSES:
            raise ValueError(f"FCOS box loss must be one of {REG_LOSSES}, got {reg_loss!r}")
        if center_sampling_radius < 0:
            raise ValueError(f"center_sampling_radius must be >= 0, got {center_sampling_radius}")
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.center_sampling_radius = center_sampling_radius
        self.reg_loss = reg_loss
        self.centerness_weighted_reg = centerness_weighted_reg

    def prepare_targets(
        self, points: list[Tensor], strides: Sequence[int], targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Labels and box targets of every location of every image.

        Args:
            points: per level (L_l, 2) float (x, y) pixels.
            strides: per level, its stride (size) in pixels.
            targets: B dicts, "boxes" (K_i, 4) float x1y1x2y2 pixels, "labels" (K_i,) in 1..C.
        Returns:
            "labels": (B, L) int64 in 0..C; "positives": (P, 2) int64 (image, location) of the
            locations with label > 0; "boxes": (P, 4) float their boxes; "distances": (P, 4)
            their (l, t, r, b) to those boxes; "points": (L, 2) the locations concatenated.
        """
        if len(points) != len(self.ranges) or len(strides) != len(self.ranges):
            raise ValueError(
                f"FCOS: {len(points)} levels of locations, {len(strides)} strides, "
                f"{len(self.ranges)} ranges"
            )
        device = points[0].device
        all_points = torch.cat(points)
        sizes = torch.cat(
            [torch.full((p.shape[0],), float(s), device=device) for p, s in zip(points, strides)]
        )
        ranges = torch.cat(
            [
                torch.tensor([r], device=device).expand(p.shape[0], 2)
                for p, r in zip(points, self.ranges)
            ]
        )
        gt_boxes, gt_labels, gt_valid = _pad_targets(targets, self.num_classes, device)
        matches = assign_locations(
            all_points, sizes, ranges, gt_boxes, gt_valid, self.center_sampling_radius
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
        pos_points = all_points[point_idx]
        distances = torch.cat([pos_points - boxes[:, :2], boxes[:, 2:] - pos_points], dim=1)
        return {
            "labels": labels,
            "positives": positives,
            "boxes": boxes,
            "distances": distances,
            "points": all_points,
        }

    def __call__(
        self,
        points: list[Tensor],
        strides: Sequence[int],
        cls_logits: list[Tensor],
        distances: list[Tensor],
        centerness: list[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            points: per level (L_l, 2) float; strides: per level, pixels.
            cls_logits: per level (B, L_l, C); distances: per level (B, L_l, 4) pixels;
            centerness: per level (B, L_l) logits (FCOSHead's outputs).
            targets: B target dicts (see prepare_targets).
        Returns:
            {"loss_cls", "loss_reg", "loss_centerness"}: scalars.
        """
        logits = torch.cat(cls_logits, dim=1)
        num_images, num_points, num_classes = logits.shape
        if len(targets) != num_images:
            raise ValueError(f"FCOS: got {len(targets)} target dicts for {num_images} images")
        if num_classes != self.num_classes:
            raise ValueError(f"FCOS: {num_classes} class logits for {self.num_classes} classes")
        t = self.prepare_targets(points, strides, targets)
        if t["labels"].shape[1] != num_points:
            raise ValueError(f"FCOS: {num_points} predictions for {t['labels'].shape[1]} locations")
        per_rank = RetinaNetLossComputation.per_rank_average
        num_pos = per_rank(t["positives"].shape[0], logits).clamp(min=1.0)
        loss_cls = self.cls_loss(logits, t["labels"], num_pos)

        image_idx, point_idx = t["positives"].unbind(1)
        pred = torch.cat(distances, dim=1)[image_idx, point_idx].float()
        pred_boxes = locations_to_boxes(t["points"][point_idx], pred)
        box_loss = iou_loss(pred_boxes, t["boxes"], self.reg_loss)
        ctr_target = centerness_targets(t["distances"])
        if self.centerness_weighted_reg:
            weight_sum = per_rank(float(ctr_target.sum()), logits).clamp(min=1e-6)
            loss_reg = (box_loss * ctr_target).sum() / weight_sum
        else:
            loss_reg = box_loss.sum() / num_pos
        ctr_logits = torch.cat(centerness, dim=1)[image_idx, point_idx].float()
        loss_ctr = (
            F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="sum") / num_pos
        )
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr}


def build_fcos_loss(cfg) -> FCOSLossComputation:
    """The loss computation from cfg.MODEL.FCOS (LOSS_TYPE through the CLASSIFICATION_LOSSES
    registry, which reads MODEL.DR_LOSS or MODEL.RETINANET.LOSS_ALPHA / LOSS_GAMMA)."""
    f = cfg.MODEL.FCOS
    return FCOSLossComputation(
        num_classes=cfg.MODEL.RETINANET.NUM_CLASSES - 1,
        cls_loss=build_classification_loss(cfg, f.LOSS_TYPE),
        ranges=level_ranges(f.SIZES_OF_INTEREST, len(f.SIZES_OF_INTEREST) + 1),
        center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
        reg_loss=f.REG_LOSS,
        centerness_weighted_reg=f.CENTERNESS_WEIGHTED_REG,
    )

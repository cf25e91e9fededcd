"""What the dense detectors' losses share: the per-rank average of a count (their normalizers),
the IoU / GIoU box loss and the centre-ness losses of the anchor-free and adaptive-assignment
heads (FCOS, ATSS), and the base of every dense loss (:class:`DenseLoss`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.dense.config import num_foreground_classes
from drdet.modeling.dense.outputs import DenseOutputs
from drdet.modeling.dense.targets import PaddedTargets, pad_targets
from drdet.utils import comm

# The box losses of :func:`iou_loss`.
REG_LOSSES = ("giou", "iou")


def per_rank_average(count: float | Tensor, like: Tensor) -> Tensor:
    """``count`` averaged over the ranks of the process group (the count itself in a single
    process), as a float tensor on ``like``'s device. Dividing each rank's loss sum by it makes
    DistributedDataParallel's gradient average equal to that of one process holding the whole
    batch, so results do not depend on the number of GPUs (maskrcnn-benchmark normalises by the
    rank's own count instead). A scalar tensor ``count`` (e.g. a sum of weights on the device)
    is taken as it is, detached, without a read back to the host."""
    if isinstance(count, Tensor):
        value = count.detach().to(device=like.device, dtype=torch.float32).reshape(()).clone()
    else:
        value = torch.full((), float(count), device=like.device)  # a fill: no host copy
    world = comm.get_world_size()
    if world > 1:
        torch.distributed.all_reduce(value)
        value = value / world
    return value


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


def centerness_targets(distances: Tensor) -> Tensor:
    """FCOS's centre-ness, sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), also ATSS's.

    Args:
        distances: (..., 4) float (l, t, r, b) > 0 from a point to the sides of its box.
    Returns:
        (...) float in (0, 1]: 1 at the box centre, towards 0 near a side.
    """
    lr, tb = distances[..., 0::2], distances[..., 1::2]
    ratio = (lr.amin(-1) / lr.amax(-1)) * (tb.amin(-1) / tb.amax(-1))
    return ratio.clamp(min=0).sqrt()


def dense_loss_args(cfg, node) -> dict[str, Any]:
    """The arguments every dense loss takes: num_classes (MODEL.NUM_CLASSES - 1) and cls_loss,
    the registered classification loss the detector's config `node` names (its LOSS_TYPE)."""
    from drdet.modeling.losses import build_classification_loss

    return {
        "num_classes": num_foreground_classes(cfg),
        "cls_loss": build_classification_loss(cfg, node.LOSS_TYPE),
    }


class DenseLoss:
    """What the losses of the dense detectors share: the class count, the classification loss
    (``cls_loss(logits (B, A, C), labels (B, A), normalizer)``, any callable of the registry),
    the check of a batch's predictions against its anchors and targets, and the labels the
    classification loss sees (``prepare_targets(...)["labels"]``). ``name`` starts its errors."""

    name = "dense detector"

    def __init__(self, num_classes: int, cls_loss: Callable[..., Tensor]):
        if not callable(cls_loss):
            raise TypeError(f"cls_loss must be callable, got {type(cls_loss).__name__}")
        self.num_classes = num_classes
        self.cls_loss = cls_loss

    def prepare_targets(
        self,
        anchors: list[Tensor],
        targets: Sequence[dict[str, Tensor]],
        check_targets: bool = True,
    ) -> dict[str, Tensor]:
        """The targets of every anchor of every image: the targets padded (:func:`pad_targets`),
        then :meth:`assign`.

        Args:
            anchors: per level (A_l, 4) float x1y1x2y2 pixels, shared by the images.
            targets: B dicts, "boxes" (K_i, 4) float x1y1x2y2 pixels, "labels" (K_i,) int64 in
                1..C (checked, naming the image, unless ``check_targets`` is False).
        Returns:
            :meth:`assign`'s dict: at least "labels" (B, A) int64 (0 background, -1 ignored)
            and "positives" (P, 2) int64 (image, anchor) of the anchors with a label > 0.
        """
        device = anchors[0].device
        return self.assign(anchors, pad_targets(targets, self.num_classes, device, check_targets))

    def assign(self, anchors: list[Tensor], gt: PaddedTargets) -> dict[str, Tensor]:
        """The targets of every anchor from the batch's padded targets ``gt``."""
        raise NotImplementedError

    def labels(self, anchors: list[Tensor], targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """(B, A) int64 label of every anchor (per-level ``anchors``), as the loss sees it."""
        return self.prepare_targets(anchors, targets)["labels"]

    def __call__(
        self,
        anchors: list[Tensor],
        outputs: DenseOutputs,
        targets: Sequence[dict[str, Tensor]],
        check_targets: bool = True,
    ) -> dict[str, Tensor]:
        """Losses of a batch: per-level ``anchors`` (A_l, 4), the head's ``outputs`` (per level
        cls_logits (B, A_l, C), box_regression (B, A_l, 4), and centerness (B, A_l) logits for
        a head with centre-ness) and B target dicts (see :meth:`prepare_targets`): the
        predictions checked against the batch, the targets prepared, then :meth:`losses`.
        Returns {name: scalar}."""
        logits = torch.cat(outputs.cls_logits, dim=1)
        self.check_batch(logits, len(targets), sum(a.shape[0] for a in anchors))
        return self.losses(logits, outputs, self.prepare_targets(anchors, targets, check_targets))

    def losses(
        self, logits: Tensor, outputs: DenseOutputs, t: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """{name: scalar} from the (B, A, C) class ``logits`` (the levels concatenated), the
        head's ``outputs`` and the targets ``t`` of :meth:`prepare_targets`."""
        raise NotImplementedError

    def check_batch(self, logits: Tensor, num_targets: int, num_anchors: int) -> None:
        """ValueError unless the (B, A, C) ``logits`` match the batch's ``num_targets`` target
        dicts, its ``num_anchors`` anchors and the loss's classes."""
        num_images, num_rows, num_classes = logits.shape
        if num_targets != num_images:
            raise ValueError(f"{self.name}: got {num_targets} target dicts for {num_images} images")
        if num_rows != num_anchors or num_classes != self.num_classes:
            raise ValueError(
                f"{self.name}: predictions (B, {num_rows}, {num_classes}) do not match "
                f"{num_anchors} anchors and {self.num_classes} classes"
            )


def centerness_losses(
    pred_boxes: Tensor,
    boxes: Tensor,
    distances: Tensor,
    ctr_logits: Tensor,
    num_pos: Tensor,
    kind: str = "giou",
    weighted: bool = True,
) -> tuple[Tensor, Tensor]:
    """(box loss, centre-ness loss) of a batch's P positives (FCOS, ATSS), from their (P, 4)
    predicted and target ``boxes`` (x1y1x2y2 pixels), the (P, 4) (l, t, r, b) ``distances`` from
    their points to their boxes' sides (-> the centre-ness targets), their (P,) centre-ness
    logits and ``num_pos`` (the positives averaged over the ranks, at least 1). The box loss is
    :func:`iou_loss` (``kind``) weighted by the centre-ness targets and divided by their sum
    averaged over the ranks (``weighted``; else summed and divided by ``num_pos``); the
    centre-ness loss is the binary cross-entropy, summed and divided by ``num_pos``."""
    box_loss = iou_loss(pred_boxes, boxes, kind)
    ctr_target = centerness_targets(distances)
    if weighted:
        weight_sum = per_rank_average(ctr_target.sum(), num_pos).clamp(min=1e-6)
        loss_reg = (box_loss * ctr_target).sum() / weight_sum
    else:
        loss_reg = box_loss.sum() / num_pos
    bce = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="sum")
    return loss_reg, bce / num_pos

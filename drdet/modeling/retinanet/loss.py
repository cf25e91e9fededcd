"""RetinaNet training losses for a whole batch at once: the configured classification loss
(drdet.modeling.losses: DR, focal or any registered one) for the classes, smooth-L1 for the boxes.

Per anchor label: 0 background, 1..C the matched box's class, -1 ignored (IoU between the
matcher's thresholds, or optionally straddling the image border).
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.losses import ClassificationLoss, build_classification_loss
from drdet.modeling.matcher import Matcher
from drdet.structures.boxes import pairwise_iou
from drdet.utils import comm

# True while the caller has already checked the targets on the host (check_targets): _pad_targets
# then skips its device-side check, the one host sync it would cost (drdet/engine/train_step.py).
_TARGETS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "drdet_targets_checked", default=False
)


@contextlib.contextmanager
def targets_checked() -> Iterator[None]:
    """Within this context the loss trusts that its targets passed :func:`check_targets`."""
    token = _TARGETS_CHECKED.set(True)
    try:
        yield
    finally:
        _TARGETS_CHECKED.reset(token)


def check_targets(targets: Sequence[dict[str, Tensor]], num_classes: int) -> None:
    """The check of :func:`_pad_targets` run on the CPU (no device sync for CPU targets, such as
    a data loader's): raises ValueError naming the image at fault."""
    _pad_targets(targets, num_classes, torch.device("cpu"), check=True)


def _pad_targets(
    targets: Sequence[dict[str, Tensor]],
    num_classes: int,
    device: torch.device,
    check: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stacks per-image targets into (B, M, 4) boxes, (B, M) labels and a (B, M) validity mask,
    M the largest number of boxes, after checking them. Raises ValueError naming the image for
    a degenerate (width or height <= 0) or non-finite box, or a label outside 1..num_classes.
    The check (one host sync on a GPU) is skipped when ``check`` is False or inside
    :func:`targets_checked`; the rest reads no tensor back."""
    counts = [int(t["boxes"].shape[0]) for t in targets]
    num_max = max(counts, default=0)
    boxes = torch.zeros(len(targets), num_max, 4, device=device)
    labels = torch.zeros(len(targets), num_max, dtype=torch.int64, device=device)
    valid = torch.zeros(len(targets), num_max, dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if t["boxes"].dim() != 2 or t["boxes"].shape[-1] != 4 or t["labels"].shape != (n,):
            raise ValueError(
                f"targets[{i}]: expected boxes (K, 4) and labels (K,), "
                f"got {tuple(t['boxes'].shape)} "
                f"and {tuple(t['labels'].shape)}"
            )
        boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)
        labels[i, :n] = t["labels"].to(device=device, dtype=torch.int64)
        valid[i, :n] = True  # a fill, not a host-to-device copy of the counts
    if check and not _TARGETS_CHECKED.get():
        _raise_on_bad_target(targets, boxes, labels, valid, num_classes)
    return boxes, labels, valid


def _raise_on_bad_target(
    targets: Sequence[dict[str, Tensor]],
    boxes: Tensor,
    labels: Tensor,
    valid: Tensor,
    num_classes: int,
) -> None:
    """ValueError naming the first image with a degenerate box or a label outside
    1..num_classes, from the padded (B, M, 4) boxes, (B, M) labels and validity mask."""
    bad_box = (
        (boxes[..., 2] <= boxes[..., 0])
        | (boxes[..., 3] <= boxes[..., 1])
        | ~boxes.isfinite().all(-1)
    ) & valid
    bad_label = ((labels < 1) | (labels > num_classes)) & valid
    bad = bad_box | bad_label
    if bad.any():  # one host sync per batch on a GPU
        i, j = [int(v) for v in bad.nonzero()[0]]
        name = f"image {i} of the batch" + (
            f" (image_id {targets[i]['image_id']})" if "image_id" in targets[i] else ""
        )
        if bad_box[i, j]:
            raise ValueError(
                f"{name}: box {j} {boxes[i, j].tolist()} is degenerate "
                "(x2 <= x1, y2 <= y1 or not finite)"
            )
        raise ValueError(
            f"{name}: box {j} has label {int(labels[i, j])}, expected 1..{num_classes}"
        )


class RetinaNetLossComputation:
    """Matches anchors to targets and computes ``{"loss_cls", "loss_reg"}``.

    Args:
        matcher, box_coder: see drdet.modeling.matcher / box_coder.
        num_classes: foreground classes C.
        cls_loss: the classification loss, ``cls_loss(logits (B, A, C), labels (B, A),
            normalizer)`` (drdet.modeling.losses: "DR", "FOCAL" or any registered one). Its
            normalizer is the number of positives plus the number of images, as
            maskrcnn-benchmark's focal loss takes it (finite without positives); under
            torch.distributed both counts are averaged over the ranks (see per_rank_average).
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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Labels and box-regression targets of every anchor of every image.

        Args:
            anchors: (A, 4) float, all levels concatenated, shared by the images.
            targets: B dicts with "boxes" (K_i, 4) float x1y1x2y2 pixels and "labels" (K_i,)
                int64 in 1..C.
        Returns:
            labels: (B, A) int64 in {-1, 0, 1..C}.
            positives: (P, 2) int64 (image, anchor) index of the anchors with label > 0.
            regression_targets: (P, 4) float encoded deltas of those anchors' boxes.
        """
        gt_boxes, gt_labels, gt_valid = _pad_targets(targets, self.num_classes, anchors.device)
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

    @staticmethod
    def per_rank_average(count: float, like: Tensor) -> Tensor:
        """`count` averaged over the ranks of the process group (the count itself in a single
        process), as a float tensor on `like`'s device. Dividing each rank's loss sum by it makes
        DistributedDataParallel's gradient average equal to that of one process holding the whole
        batch, so results do not depend on the number of GPUs (maskrcnn-benchmark normalises by
        the rank's own count instead)."""
        value = torch.full((), float(count), device=like.device)  # a fill: no host copy
        world = comm.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(value)
            value = value / world
        return value

    def __call__(
        self,
        anchors: list[Tensor],
        cls_logits: list[Tensor],
        box_deltas: list[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            anchors: per level (A_l, 4) float.
            cls_logits: per level (B, A_l, C) float.
            box_deltas: per level (B, A_l, 4) float.
            targets: B target dicts (see prepare_targets).
        Returns:
            {"loss_cls": scalar, "loss_reg": scalar}.
        """
        anchors_all = torch.cat(anchors)
        logits = torch.cat(cls_logits, dim=1)
        deltas = torch.cat(box_deltas, dim=1)
        num_images, num_anchors, num_classes = logits.shape
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} target dicts for {num_images} images")
        if num_anchors != anchors_all.shape[0] or num_classes != self.num_classes:
            raise ValueError(
                f"predictions (B, {num_anchors}, {num_classes}) do not match "
                f"{anchors_all.shape[0]} anchors "
                f"and {self.num_classes} classes"
            )
        labels, positives, regression_targets = self.prepare_targets(anchors_all, targets)
        num_pos = self.per_rank_average(positives.shape[0], logits)
        num_norm = self.per_rank_average(num_images, logits)

        loss_cls = self.cls_loss(logits, labels, num_pos + num_norm)

        predicted = deltas[positives[:, 0], positives[:, 1]]
        loss_reg = F.smooth_l1_loss(
            predicted.float(), regression_targets.float(), beta=self.reg_beta, reduction="sum"
        ) / (num_pos * self.reg_norm).clamp(min=1.0)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg}


def build_retinanet_loss(cfg, box_coder: BoxCoder) -> RetinaNetLossComputation:
    """The loss computation from cfg.MODEL.RETINANET and cfg.MODEL.DR_LOSS."""
    rcfg = cfg.MODEL.RETINANET
    matcher = Matcher(rcfg.FG_IOU_THRESHOLD, rcfg.BG_IOU_THRESHOLD, rcfg.ALLOW_LOW_QUALITY_MATCHES)
    return RetinaNetLossComputation(
        matcher,
        box_coder,
        num_classes=rcfg.NUM_CLASSES - 1,
        cls_loss=build_classification_loss(cfg),
        reg_beta=rcfg.BBOX_REG_BETA,
        reg_norm=rcfg.BBOX_REG_WEIGHT,
    )

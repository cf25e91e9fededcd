"""What the dense detectors' losses share: the per-rank average of a count (their normalizers)
and the IoU / GIoU box loss of the anchor-free and adaptive-assignment heads (FCOS, ATSS)."""

from __future__ import annotations

import torch
from torch import Tensor

from drdet.utils import comm

# The box losses of :func:`iou_loss`.
REG_LOSSES = ("giou", "iou")


def per_rank_average(count: float, like: Tensor) -> Tensor:
    """``count`` averaged over the ranks of the process group (the count itself in a single
    process), as a float tensor on ``like``'s device. Dividing each rank's loss sum by it makes
    DistributedDataParallel's gradient average equal to that of one process holding the whole
    batch, so results do not depend on the number of GPUs (maskrcnn-benchmark normalises by the
    rank's own count instead)."""
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

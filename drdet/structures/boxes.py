"""Box utilities on plain tensors.

Boxes are ``(..., 4)`` float tensors ``(x1, y1, x2, y2)`` in pixels, continuous coordinates:
width = x2 - x1 (no legacy "+1").
"""

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``boxes`` (..., 4); empty or inverted boxes have area 0. Returns (...)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every box of ``boxes1`` with every box of ``boxes2``.

    Args:
        boxes1: (..., N, 4) float, x1y1x2y2.
        boxes2: (..., M, 4) float, x1y1x2y2; leading dims broadcast with those of ``boxes1``.
    Returns:
        (..., N, M) IoU in [0, 1]; a pair whose union is empty has IoU 0 (never NaN).
    """
    area1 = box_area(boxes1)[..., :, None]
    area2 = box_area(boxes2)[..., None, :]
    # one contiguous (..., N, 1) / (..., 1, M) vector per coordinate, and in-place arithmetic on
    # the (..., N, M) results: the matcher calls this on (images, boxes, ~200k anchors).
    x1a, y1a, x2a, y2a = (c[..., :, None] for c in boxes1.unbind(-1))
    x1b, y1b, x2b, y2b = (c[..., None, :].contiguous() for c in boxes2.unbind(-1))
    inter = torch.minimum(x2a, x2b).sub_(torch.maximum(x1a, x1b)).clamp_(min=0)
    inter.mul_(torch.minimum(y2a, y2b).sub_(torch.maximum(y1a, y1b)).clamp_(min=0))
    union = (area1 + area2).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union)  # union > 0 unless both boxes are empty, and then inter = 0


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | Tensor) -> Tensor:
    """Clips ``boxes`` (..., 4) to an image of ``image_size`` (height, width) pixels.

    ``image_size`` may also be a (..., 2) tensor of (height, width) that broadcasts with the
    boxes' leading dims, to clip boxes of several images at once. Returns a new tensor.
    """
    if isinstance(image_size, Tensor):
        size = image_size.to(boxes.dtype)
        h, w = size[..., 0:1], size[..., 1:2]
        x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)
        y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)
    else:
        height, width = image_size
        x = boxes[..., 0::2].clamp(min=0, max=width)
        y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nonempty_boxes(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """Mask (...) bool of the boxes (..., 4) whose width and height both exceed ``min_size``."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh[..., 0] > min_size) & (wh[..., 1] > min_size)

"""Class-aware NMS as one op with the interface of ONNX's ``NonMaxSuppression``, so that the
exported graph holds the standard op: ``drdet_export::multiclass_nms`` runs torchvision's NMS in
eager mode and in a ``torch.export`` program, and the ONNX exporter writes it as
``NonMaxSuppression`` (:data:`ONNX_TRANSLATIONS`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import Tensor


@torch.library.custom_op("drdet_export::multiclass_nms", mutates_args=())
def multiclass_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float
) -> Tensor:
    """Greedy NMS per (image, class), ONNX NonMaxSuppression's semantics (center_point_box 0,
    no limit on the boxes kept per class).

    Args:
        boxes: (B, N, 4) float x1y1x2y2 pixels; scores: (B, C, N) float.
        iou_threshold: a box is dropped when its IoU with a kept box of higher score of the
            same image and class is > iou_threshold.
        score_threshold: only the entries with score > score_threshold take part.
    Returns:
        (M, 3) int64 (image, class, box) of the kept entries, ordered by image, class, then
        decreasing score.
    """
    images, classes, index = (scores > score_threshold).nonzero(as_tuple=True)
    groups = images * scores.shape[1] + classes  # nonzero's order: sorted by group
    counts = torch.bincount(groups, minlength=1).tolist()
    starts = torch.tensor([0, *counts], dtype=torch.int64).cumsum(0).tolist()
    kept = []
    for start, count in zip(starts, counts):
        if count:
            rows = torch.arange(start, start + count)
            b, n = images[start], index[rows]
            keep = torchvision.ops.nms(
                boxes[b, n].float(), scores[b, classes[start], n], iou_threshold
            )
            kept.append(rows[keep])
    rows = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64)
    return torch.stack([images[rows], classes[rows], index[rows]], dim=1)


@multiclass_nms.register_fake
def _multiclass_nms_fake(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float
) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((kept, 3), dtype=torch.int64)


def _onnx_multiclass_nms(boxes, scores, iou_threshold: float, score_threshold: float):
    from onnxscript import opset18

    op: Any = opset18  # (onnxscript's stubs type Constant's result as any tensor type)
    max_per_class = op.Shape(boxes, start=1, end=2)
    iou = op.Constant(value_float=iou_threshold)
    score = op.Constant(value_float=score_threshold)
    return op.NonMaxSuppression(boxes, scores, max_per_class, iou, score, center_point_box=0)


ONNX_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.drdet_export.multiclass_nms.default: _onnx_multiclass_nms
}

"""Non-maximum suppression: class-agnostic ``nms`` and class-aware ``batched_nms``.

Native CPU/CUDA ops (``torch.ops.drdet.nms`` / ``batched_nms``) that give torchvision's results
(``torchvision.ops.nms`` / ``batched_nms``) on inputs without score ties. batched_nms runs the
classes independently inside the op (in parallel on the CPU, masked in one bitmask kernel on
CUDA), with no Python loop over classes and no coordinate offsets.

CUDA kernels: version "v1" (the default, verified on a GPU) makes one suppression mask over all
boxes and handles at most 393,216 boxes; version "v2" (``drdet.layers.set_cuda_kernels("v2")`` or
``DRDET_CUDA_KERNELS=v2``) makes one mask per class segment (memory grows with the boxes per
class) and has no such limit, but has NOT YET RUN ON A GPU.

Without the extension (drdet/layers/_ext.py), both run torchvision.ops.nms (per class for
batched_nms) with the same checks (drdet/layers/pure_ops.py).
"""

import torch
from torch import Tensor

from drdet.layers import pure_ops
from drdet.layers._ext import extension_in_use, extension_loaded, ops

__all__ = ["nms", "batched_nms"]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) float16, bfloat16, float32 or float64 boxes (x1, y1, x2, y2) in pixels,
            continuous coordinates (width = x2 - x1). Half-precision boxes are computed in float32.
        scores: (N,) float scores, on the device of ``boxes``.
        iou_threshold: a box is dropped when its IoU with a kept higher-scoring box is
            > iou_threshold (two zero-area boxes never suppress each other, as in torchvision).

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, in decreasing score order.

    Raises:
        RuntimeError: on a wrong shape, dtype or device, or a non-finite threshold; on CUDA with
            the default kernels ("v1"), above 393,216 boxes (see the module docstring).
    """
    if not extension_in_use():
        return pure_ops.nms(boxes, scores, float(iou_threshold))
    return ops.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware non-maximum suppression: boxes of different classes never suppress each other.

    Args:
        boxes: (N, 4) float boxes (x1, y1, x2, y2) in pixels, as for :func:`nms`.
        scores: (N,) float scores.
        class_ids: (N,) integer class (or any group) id of each box.
        iou_threshold: IoU above which a box is dropped, as for :func:`nms`.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, in decreasing score order.

    Raises:
        RuntimeError: on a wrong shape, dtype or device, or a non-finite threshold; on CUDA with
            the default kernels ("v1"), above 393,216 boxes in all (with "v2" there is no limit
            below the GPU's memory: the mask takes about n_c^2 / 8 bytes per class of n_c boxes).
    """
    if not extension_in_use():
        return pure_ops.batched_nms(boxes, scores, class_ids, float(iou_threshold))
    return ops.batched_nms(boxes, scores, class_ids, float(iou_threshold))


# --- fake (meta) kernels, so torch.compile can trace the ops: the number kept is data-dependent
# (registered where the extension defines the ops)


def _kept_fake(boxes: Tensor) -> Tensor:
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        lambda: f"boxes must be (N, 4), got {tuple(boxes.shape)}",
    )
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.int64)


def _nms_fake(boxes, scores, iou_threshold):
    return _kept_fake(boxes)


def _batched_nms_fake(boxes, scores, class_ids, iou_threshold):
    return _kept_fake(boxes)


if extension_loaded():
    torch.library.register_fake("drdet::nms", _nms_fake)
    torch.library.register_fake("drdet::batched_nms", _batched_nms_fake)

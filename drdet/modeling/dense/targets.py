"""The ground truth of a batch as the dense losses read it: per-image target dicts padded into
tensors, their check (degenerate boxes, labels outside 1..C), which names the image, and the
labels and boxes an assignment of the anchors to those boxes gives.

The check is one host sync on a GPU. The training step runs it on the host while the targets are
still there (:func:`check_targets`, drdet/engine/train_step.py) and then calls the detector with
``check_targets=False``, which the detector passes on to its loss: an explicit argument, no
hidden state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor


class PaddedTargets(NamedTuple):
    """A batch's targets as tensors (:func:`pad_targets`): (B, M, 4) float boxes x1y1x2y2
    pixels, (B, M) int64 labels and the (B, M) bool mask of the real boxes among the M slots."""

    boxes: Tensor
    labels: Tensor
    valid: Tensor


def check_targets(targets: Sequence[dict[str, Tensor]], num_classes: int) -> None:
    """The check of :func:`pad_targets` run on the CPU (no device sync for CPU targets, such as
    a data loader's): raises ValueError naming the image at fault."""
    pad_targets(targets, num_classes, torch.device("cpu"), check=True)


def pad_targets(
    targets: Sequence[dict[str, Tensor]],
    num_classes: int,
    device: torch.device,
    check: bool = True,
) -> PaddedTargets:
    """Stacks per-image targets into (B, M, 4) boxes, (B, M) labels and a (B, M) validity mask,
    M the largest number of boxes. With ``check`` (one host sync on a GPU) it raises ValueError
    naming the image for a degenerate (width or height <= 0) or non-finite box, or a label
    outside 1..num_classes; the rest reads no tensor back."""
    counts = [int(t["boxes"].shape[0]) for t in targets]
    num_max = max(counts, default=0)
    boxes = torch.zeros(len(targets), num_max, 4, device=device)
    labels = torch.zeros(len(targets), num_max, dtype=torch.int64, device=device)
    valid = torch.zeros(len(targets), num_max, dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if t["boxes"].dim() != 2 or t["boxes"].shape[-1] != 4 or t["labels"].shape != (n,):
            raise ValueError(
                f"targets[{i}]: expected boxes (K, 4) and labels (K,), "
                f"got {tuple(t['boxes'].shape)} and {tuple(t['labels'].shape)}"
            )
        boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)
        labels[i, :n] = t["labels"].to(device=device, dtype=torch.int64)
        valid[i, :n] = True  # a fill, not a host-to-device copy of the counts
    if check:
        _raise_on_bad_target(targets, boxes, labels, valid, num_classes)
    return PaddedTargets(boxes, labels, valid)


def matched_targets(
    matches: Tensor, gt_boxes: Tensor, gt_labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The targets an assignment gives every anchor (or location) of a batch.

    Args:
        matches: (B, A) int64, the index in 0..M-1 of each anchor's box, < 0 for background.
        gt_boxes, gt_labels: (B, M, 4) and (B, M) of :func:`pad_targets`.
    Returns:
        labels (B, A) int64 in 0..C (0: background); positives (P, 2) int64 (image, anchor) of
        the anchors with a label > 0; boxes (P, 4) float their boxes.
    """
    labels = (
        torch.gather(gt_labels, 1, matches.clamp(min=0))
        if gt_labels.shape[1]
        else torch.zeros_like(matches)
    )
    labels = labels.masked_fill(matches < 0, 0)
    positives = (labels > 0).nonzero()
    image_idx, anchor_idx = positives.unbind(1)
    return labels, positives, gt_boxes[image_idx, matches[image_idx, anchor_idx]]


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

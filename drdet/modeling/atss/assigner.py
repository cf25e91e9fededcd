"""ATSS's adaptive training sample selection (Zhang et al., CVPR 2020): which box (if any) each
anchor of each image is a positive of, for a whole batch at once.

For each ground-truth box g (centre c_g) and each pyramid level:
- candidates: the ``topk`` anchors of the level whose centres are closest to c_g (Euclidean
  distance; all the level's anchors if it has fewer). Equal distances go to the anchor listed
  first (row-major, the anchor generator's order), so the selection does not depend on the
  device's top-k;
- the box's IoU threshold is mean + std of the IoUs of its candidates over all levels, std the
  unbiased one (n - 1 in the denominator: torch's default, as in the authors' code and
  mmdetection's ATSSAssigner; 0 when there is one candidate);
- a candidate is a positive of g when its IoU with g is >= that threshold and its centre lies
  inside g by more than ``inside_eps`` pixels on every side (0.01, the authors' and
  mmdetection's rule: a centre on a side, or within 0.01 px of it, is outside).
An anchor that is a positive of several boxes goes to the box of highest IoU with it; equal IoUs
go to the box listed first. Every other anchor is background: ATSS ignores no anchor.

Crowd boxes never reach this step: the datasets leave them out of the training targets
(drdet/data/datasets/coco.py; VOC's difficult objects likewise), so they make no positive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from drdet.structures.boxes import pairwise_iou

# A candidate's centre must lie this far (pixels) inside its box on every side.
INSIDE_EPS = 0.01


def box_centres(boxes: Tensor) -> Tensor:
    """(..., 2) float (x, y) centres of (..., 4) x1y1x2y2 boxes."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def candidate_anchors(
    anchor_centres: Tensor, num_per_level: list[int], gt_boxes: Tensor, topk: int
) -> Tensor:
    """The candidates of every box: per level, the ``topk`` anchors closest to its centre.

    Args:
        anchor_centres: (A, 2) float (x, y) pixels, all levels concatenated.
        num_per_level: anchors of each level (summing to A), in that order.
        gt_boxes: (B, M, 4) float x1y1x2y2 pixels.
    Returns:
        (B, M, K) int64 anchor indices into the A anchors, K = sum of min(topk, A_l), level by
        level, nearest first; equal distances in anchor order.
    """
    centres = box_centres(gt_boxes)  # (B, M, 2)
    out, start = [], 0
    for count in num_per_level:
        level = anchor_centres[start : start + count]
        dist2 = (centres[:, :, None, :] - level[None, None]).square().sum(-1)  # (B, M, A_l)
        order = dist2.argsort(dim=-1, stable=True)[..., : min(topk, count)]
        out.append(order + start)
        start += count
    return torch.cat(out, dim=-1)


def adaptive_iou_threshold(candidate_ious: Tensor) -> Tensor:
    """(B, M) mean + unbiased std of each box's (B, M, K) candidate IoUs (std 0 for K = 1)."""
    mean = candidate_ious.mean(-1)
    if candidate_ious.shape[-1] < 2:
        return mean
    return mean + candidate_ious.std(-1)


def atss_assign(
    anchors: list[Tensor],
    gt_boxes: Tensor,
    gt_valid: Tensor,
    topk: int = 9,
    inside_eps: float = INSIDE_EPS,
) -> Tensor:
    """The box each anchor is a positive of (see the module docstring), for a batch of images.

    Args:
        anchors: per level (A_l, 4) float x1y1x2y2 pixels, shared by the images.
        gt_boxes: (B, M, 4) float x1y1x2y2 pixels (padding rows allowed).
        gt_valid: (B, M) bool, False for padding rows (which make no positive).
        topk: candidates per box and level.
    Returns:
        (B, A) int64: the index in 0..M-1 of the box, or -1 for background.
    """
    all_anchors = torch.cat(anchors)
    num_images, num_boxes = gt_valid.shape
    matches = torch.full(
        (num_images, all_anchors.shape[0]), -1, dtype=torch.int64, device=all_anchors.device
    )
    if num_boxes == 0 or all_anchors.shape[0] == 0:
        return matches
    centres = box_centres(all_anchors)
    cand = candidate_anchors(centres, [a.shape[0] for a in anchors], gt_boxes, topk)  # (B, M, K)
    cand_ious = pairwise_iou(gt_boxes[:, :, None, :], all_anchors[cand])[:, :, 0, :]
    positive = cand_ious >= adaptive_iou_threshold(cand_ious)[..., None]
    x, y = centres[cand].unbind(-1)  # (B, M, K) each
    x1, y1, x2, y2 = (c[..., None] for c in gt_boxes.unbind(-1))
    inside = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1).amin(-1) > inside_eps
    positive &= inside & gt_valid[..., None]
    # Each anchor to the box of highest IoU among those it is a positive of (first on ties).
    claims = cand_ious.new_full((num_images, num_boxes, all_anchors.shape[0]), -math.inf)
    claims.scatter_(-1, cand, torch.where(positive, cand_ious, -math.inf))
    best, box = claims.max(dim=1)  # over the boxes: the first maximal index
    return torch.where(torch.isfinite(best), box, matches)

"""Assigns each anchor the ground-truth box it overlaps most, batched over images."""

import torch
from torch import Tensor


class Matcher:
    """Matches anchors to ground-truth boxes from an IoU matrix.

    For every anchor, with best IoU ``v`` over the image's boxes:
    ``v >= high_threshold`` -> index of that box; ``low_threshold <= v < high_threshold`` ->
    ``BETWEEN_THRESHOLDS`` (-2, ignored in training); ``v < low_threshold`` ->
    ``BELOW_LOW_THRESHOLD`` (-1, background). With ``allow_low_quality_matches`` every box also
    keeps the anchors it overlaps most (all of them on ties), even below ``high_threshold``; such
    an anchor takes its own best box (as in Detectron, maskrcnn-benchmark and torchvision). A box
    that overlaps no anchor at all (best IoU 0) gets no low-quality match.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = True
    ):
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold {low_threshold} > high_threshold {high_threshold}"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor, gt_valid: Tensor | None = None) -> Tensor:
        """Matches for an IoU matrix.

        Args:
            iou: (..., M, A) float IoU of M boxes (rows) with A anchors (columns); leading dims
                are images of a batch.
            gt_valid: optional (..., M) bool, False for the padding rows of images that have
                fewer than M boxes.
        Returns:
            (..., A) int64: the matched box index in [0, M), or -1 (below) / -2 (between).
        """
        if gt_valid is not None:
            iou = iou.masked_fill(~gt_valid[..., None], -1.0)
        if iou.shape[-2] == 0:
            return torch.full(
                iou.shape[:-2] + iou.shape[-1:],
                self.BELOW_LOW_THRESHOLD,
                dtype=torch.int64,
                device=iou.device,
            )
        best_iou, matches = iou.max(dim=-2)
        candidates = matches.clone() if self.allow_low_quality_matches else None
        matches = matches.masked_fill(best_iou < self.high_threshold, self.BETWEEN_THRESHOLDS)
        matches = matches.masked_fill(best_iou < self.low_threshold, self.BELOW_LOW_THRESHOLD)
        if candidates is not None:
            best_per_gt = iou.max(dim=-1, keepdim=True).values
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            restore = is_best.any(dim=-2)
            matches = torch.where(restore, candidates, matches)
        return matches

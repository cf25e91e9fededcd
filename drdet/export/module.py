"""A trained dense detector as one end-to-end module for export: images in, a fixed number of
detections per image out, every step in traced tensor code (no Python branch on data)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdet.export.nms import multiclass_nms
from drdet.modeling.dense import DenseDetector, DensePostProcessor, score_logits
from drdet.modeling.inference_copy import prepare_for_inference
from drdet.structures.boxes import clip_boxes, nonempty_boxes

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


class ExportableDetector(nn.Module):
    """A :class:`DenseDetector` and its :class:`DensePostProcessor` in one forward.

    ``forward(images)``: images (B, 3, H, W) float32, the network's input format before
    normalisation (BGR 0-255 when INPUT.TO_BGR255, else RGB 0-1), each image taken as the whole
    H x W (a batch padded from images of different sizes is one of H x W each). It normalises,
    pads to the size divisibility, runs the dense core, and post-processes as the detector does
    in eval: per level the ``pre_nms_top_n`` best (anchor, class) entries above the score
    threshold, decoded, clipped to H x W, non-empty; class-aware NMS per image; the K =
    ``detections_per_img`` best. Returns

    - boxes (B, K, 4) float x1y1x2y2 in pixels of ``images``;
    - scores (B, K) float, decreasing;
    - labels (B, K) int64 in 1..C;
    - num_detections (B,) int64: the entries past it are padding (box 0, score 0, label 0).
    """

    detector: DenseDetector

    def __init__(self, detector: DenseDetector):
        super().__init__()
        post = detector.postprocessor
        if not isinstance(post, DensePostProcessor):
            raise TypeError(
                f"{type(detector).__name__}: export needs a DensePostProcessor, got "
                f"{type(post).__name__}"
            )
        model = cast(
            DenseDetector, prepare_for_inference(detector, channels_last=False, prepack=False)
        )
        if hasattr(model.head, "pack_levels"):  # the packing's layout is computed on the host
            setattr(model.head, "pack_levels", False)  # noqa: B010
        self.detector = model
        self.box_coder = post.box_coder
        self.logit_thresh = post.logit_thresh
        self.pre_nms_top_n = int(post.pre_nms_top_n)
        self.nms_thresh = float(post.nms_thresh)
        self.detections_per_img = int(post.detections_per_img)
        self.min_size = float(post.min_size)
        self.class_score_exponent = float(post.class_score_exponent)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.detector
        height, width = images.shape[-2:]
        tensors = (images - model.pixel_mean) / model.pixel_std
        divisor = max(int(model.size_divisibility), 1)
        tensors = F.pad(tensors, (0, (-width) % divisor, 0, (-height) % divisor))
        outputs, anchors = model.dense_forward(tensors)
        logits = score_logits(outputs, self.class_score_exponent)
        size = images.new_tensor([1.0, 0.0]) * height + images.new_tensor([0.0, 1.0]) * width
        parts = [
            self.candidates(a, c, r, size)
            for a, c, r in zip(anchors, logits, outputs.box_regression)
        ]
        parts.append(self.padding(images.shape[0], images))
        boxes, scores, classes, valid = (torch.cat(p, dim=1) for p in zip(*parts))
        return self.select(boxes, scores, classes, valid, logits[0].shape[-1])

    def candidates(
        self, anchors: Tensor, logits: Tensor, regression: Tensor, size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ``pre_nms_top_n`` best entries of one level, as fixed-size tensors.

        Args:
            anchors: (A, 4); logits: (B, A, C) score logits; regression: (B, A, 4);
            size: (2,) float (height, width) the boxes are clipped to.
        Returns:
            boxes (B, k, 4), scores (B, k), classes (B, k) int64 in 0..C-1, valid (B, k) bool
            (above the threshold and non-empty after clipping); k = pre_nms_top_n.
        """
        num_images, num_anchors, num_classes = logits.shape
        k = self.pre_nms_top_n
        flat = logits.float().reshape(num_images, -1)
        # k entries of -inf at the end: a level with fewer than k entries still gives k
        flat = torch.cat([flat, flat.new_full((num_images, k), -torch.inf)], dim=1)
        top, idx = flat.topk(k, dim=1)
        real = idx < num_anchors * num_classes
        anchor_idx = torch.where(real, torch.div(idx, num_classes, rounding_mode="floor"), 0)
        rows = regression.float().gather(1, anchor_idx[..., None].expand(-1, -1, 4))
        boxes = self.box_coder.decode(rows.reshape(-1, 4), anchors[anchor_idx].reshape(-1, 4))
        boxes = clip_boxes(boxes.reshape(num_images, k, 4), size)
        valid = real & (top > self.logit_thresh) & nonempty_boxes(boxes, self.min_size)
        return boxes, top.sigmoid(), idx % num_classes, valid

    def padding(self, num_images: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """K invalid entries per image, so that there are always K to choose from."""
        k = self.detections_per_img
        return (
            like.new_zeros((num_images, k, 4)),
            like.new_zeros((num_images, k)),
            torch.zeros((num_images, k), dtype=torch.int64, device=like.device),
            torch.zeros((num_images, k), dtype=torch.bool, device=like.device),
        )

    def select(
        self, boxes: Tensor, scores: Tensor, classes: Tensor, valid: Tensor, num_classes: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Class-aware NMS per image over the (B, N) candidates, then the K best per image."""
        num_images, num = scores.shape
        ids = torch.arange(num_classes, device=classes.device)
        mine = (classes[:, None, :] == ids[None, :, None]) & valid[:, None, :]
        per_class = torch.where(mine, scores[:, None, :], -1.0)  # (B, C, N)
        kept = multiclass_nms(boxes, per_class, self.nms_thresh, -0.5)
        flat = kept[:, 0] * num + kept[:, 2]
        is_kept = scores.new_zeros(num_images * num).index_fill(0, flat, 1.0)
        final = torch.where(is_kept.reshape(num_images, num) > 0, scores, -1.0)
        top, order = final.topk(self.detections_per_img, dim=1)
        found = top >= 0
        out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4)) * found[..., None]
        labels = torch.where(found, classes.gather(1, order) + 1, 0)
        return out_boxes, top.clamp(min=0.0), labels, found.sum(1)

"""Dense post-processing, shared by every dense detector: from per-level logits and box
regressions at the anchors to detections, vectorised over images and classes (the only Python
loop is over the levels). With centre-ness (FCOS, ATSS) an entry's score is
sigmoid(class logit)^e * sigmoid(centre-ness logit)^(1 - e), e = the node's CLASS_SCORE_EXPONENT
(0.5, the published sqrt of the product, by default)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from drdet import layers
from drdet.modeling.dense.outputs import DenseOutputs
from drdet.structures.boxes import clip_boxes, nonempty_boxes


class BoxDecoder(Protocol):
    """What the post-processor needs of a box coder: ``decode(regression (K, 4), anchors (K, 4))
    -> boxes (K, 4)`` x1y1x2y2 pixels (drdet.modeling.box_coder.BoxCoder; FCOS's DistanceCoder)."""

    def decode(self, regression: Tensor, anchors: Tensor, /) -> Tensor: ...


def centerness_weighted_logits(
    cls_logits: Tensor, centerness: Tensor, class_exponent: float = 0.5
) -> Tensor:
    """The logit of the score sigmoid(cls)^e * sigmoid(centre-ness)^(1 - e), e =
    ``class_exponent`` (0.5, FCOS's and ATSS's: sqrt(sigmoid(cls) * sigmoid(centre-ness))), so
    that its sigmoid is that score (computed in log space: exact where the sigmoids saturate).

    Args:
        cls_logits: (B, L, C) float; centerness: (B, L) float logits; class_exponent in (0, 1].
    Returns:
        (B, L, C) float logits z with sigmoid(z) = sigmoid(cls)^e * sigmoid(centerness)^(1 - e).
    """
    # (e = 0.5 gives 0.5 * a + 0.5 * b, bit for bit 0.5 * (a + b): halving is exact)
    log_cls, log_ctr = F.logsigmoid(cls_logits), F.logsigmoid(centerness)[..., None]
    log_score = class_exponent * log_cls + (1.0 - class_exponent) * log_ctr
    return log_score - torch.log(-torch.expm1(log_score))


def score_logits(outputs: DenseOutputs, class_exponent: float = 0.5) -> list[Tensor]:
    """Per level, the (B, A, C) logits whose sigmoid is the detection score: the class logits,
    or with centre-ness their centerness_weighted_logits at ``class_exponent``."""
    if outputs.centerness is None:
        return list(outputs.cls_logits)
    return [
        centerness_weighted_logits(c, o, class_exponent)
        for c, o in zip(outputs.cls_logits, outputs.centerness)
    ]


class DensePostProcessor:
    """Turns a dense head's outputs into at most ``detections_per_img`` detections per image.

    Per level and image: keep the (anchor, class) entries with score > ``score_thresh``, at most
    the ``pre_nms_top_n`` best; decode their boxes, clip them to the image, drop those with
    width or height <= ``min_size``. Then, per image, class-aware NMS at ``nms_thresh`` over all
    levels (one batched_nms call for the whole batch: the NMS groups are (image, class) pairs),
    and the ``detections_per_img`` best by score.
    """

    def __init__(
        self,
        box_coder: BoxDecoder,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_size: float = 0.0,
        class_score_exponent: float = 0.5,
    ):
        if not 0.0 <= score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh}")
        if not 0.0 < class_score_exponent <= 1.0:
            raise ValueError(f"class_score_exponent must be in (0, 1], got {class_score_exponent}")
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        # sigmoid(x) > t  <=>  x > logit(t); t = 0 keeps every finite logit.
        self.logit_thresh = (
            math.log(score_thresh / (1.0 - score_thresh)) if score_thresh > 0 else -math.inf
        )
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        # heads with centre-ness: score = sigmoid(cls)^e * sigmoid(centre-ness)^(1 - e)
        self.class_score_exponent = class_score_exponent

    def candidates(
        self, anchors: Tensor, cls_logits: Tensor, regression: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The kept candidates of one level.

        Args:
            anchors: (A, 4) float; cls_logits: (B, A, C) score logits; regression: (B, A, 4);
            image_sizes: (B, 2) (height, width).
        Returns:
            boxes (N, 4) float clipped, scores (N,) float, classes (N,) int64 in 0..C-1,
            images (N,) int64 index in the batch; ordered by image, then by decreasing score.
        """
        num_images, _, num_classes = cls_logits.shape
        logits, idx, images = self._select(cls_logits.reshape(num_images, -1))
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        boxes = self.box_coder.decode(
            regression[images, anchor_idx].float(), anchors[anchor_idx].float()
        )
        boxes = clip_boxes(boxes, image_sizes[images])
        keep = nonempty_boxes(boxes, self.min_size)
        return (
            boxes[keep],
            logits[keep].float().sigmoid(),
            (idx % num_classes)[keep],
            images[keep],
        )

    def _select(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, flat index, image) of the entries above the threshold, at most
        ``pre_nms_top_n`` per image, ordered by image then decreasing logit."""
        num_images = flat.shape[0]
        k = min(self.pre_nms_top_n, flat.shape[1])
        above = flat > self.logit_thresh  # on logits: sigmoid is monotonic and saturates
        # (bool -> uint8 view, int32 sums: ~10x faster than a bool sum, which widens to int64)
        if int(above.view(torch.uint8).sum(1, dtype=torch.int32).max()) > k:
            # some image has more than k entries above the threshold: the k best of each image.
            logits, idx = flat.topk(k, dim=1)
            images = torch.arange(num_images, device=flat.device)[:, None].expand(-1, k)
            keep = logits > self.logit_thresh
            return logits[keep], idx[keep], images[keep]
        # every entry above the threshold is kept: one pass over the logits instead of a top-k,
        # then the same order (by image, decreasing score) from a sort of the few.
        images, idx = above.nonzero(as_tuple=True)
        logits = flat[images, idx]
        order = logits.argsort(descending=True, stable=True)
        order = order[images[order].argsort(stable=True)]
        return logits[order], idx[order], images[order]

    def __call__(
        self,
        anchors: list[Tensor],
        outputs: DenseOutputs,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of a batch.

        Args:
            anchors: per level (A_l, 4); outputs: the head's per-level predictions;
            image_sizes: B (height, width) before padding.
        Returns:
            B dicts: "boxes" (K, 4) float x1y1x2y2 pixels of the (resized) image, "scores" (K,)
            float in decreasing order, "labels" (K,) int64 in 1..C; K <= detections_per_img.
        """
        logits = score_logits(outputs, self.class_score_exponent)
        num_images, _, num_classes = logits[0].shape
        sizes = torch.tensor(image_sizes, dtype=torch.float32, device=logits[0].device).reshape(
            num_images, 2
        )
        parts = [
            self.candidates(a, c, r, sizes)
            for a, c, r in zip(anchors, logits, outputs.box_regression)
        ]
        boxes, scores, classes, images = (torch.cat(p) for p in zip(*parts))
        if boxes.shape[0] > 0:
            keep = self._nms(boxes, scores, classes, images, num_images, num_classes)
            boxes, scores, classes, images = boxes[keep], scores[keep], classes[keep], images[keep]
        per_image = torch.bincount(images, minlength=num_images).tolist()
        return [
            {"boxes": b, "scores": s, "labels": c + 1}
            for b, s, c in zip(
                boxes.split(per_image), scores.split(per_image), classes.split(per_image)
            )
        ]

    def _nms(
        self,
        boxes: Tensor,
        scores: Tensor,
        classes: Tensor,
        images: Tensor,
        num_images: int,
        num_classes: int,
    ) -> Tensor:
        """Indices kept by class-aware NMS per image, the ``detections_per_img`` best of each
        image, ordered by image then decreasing score."""
        keep = layers.batched_nms(boxes, scores, images * num_classes + classes, self.nms_thresh)
        # keep is in decreasing score; a stable sort by image keeps that order per image.
        keep = keep[torch.sort(images[keep], stable=True).indices]
        counts = torch.bincount(images[keep], minlength=num_images)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(keep.shape[0], device=keep.device) - starts[images[keep]]
        return keep[rank < self.detections_per_img]


def build_dense_postprocessor(cfg, box_coder: BoxDecoder, node) -> DensePostProcessor:
    """A DensePostProcessor with the thresholds of the detector's config `node` (its
    INFERENCE_TH, PRE_NMS_TOP_N, NMS_TH, and CLASS_SCORE_EXPONENT where it declares one:
    drdet.modeling.dense.config.declare_centerness_keys) and TEST.DETECTIONS_PER_IMG."""
    return DensePostProcessor(
        box_coder,
        score_thresh=node.INFERENCE_TH,
        pre_nms_top_n=node.PRE_NMS_TOP_N,
        nms_thresh=node.NMS_TH,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
        class_score_exponent=node.get("CLASS_SCORE_EXPONENT", 0.5),
    )

"""FCOS post-processing: centre-ness-weighted scores, then RetinaNet's vectorised candidate
selection and class-aware NMS (drdet.modeling.retinanet.inference) on the locations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.retinanet.inference import RetinaNetPostProcessor


class DistanceCoder:
    """Decodes (l, t, r, b) distances at locations into boxes, with the interface of
    drdet.modeling.box_coder.BoxCoder.decode; a location is passed as the empty box
    (x, y, x, y)."""

    @staticmethod
    def decode(distances: Tensor, locations: Tensor) -> Tensor:
        """distances (N, 4) pixels, locations (N, 4) (x, y, x, y) -> boxes (N, 4) x1y1x2y2."""
        points = locations[:, :2]
        return torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)


def centerness_weighted_logits(cls_logits: Tensor, centerness: Tensor) -> Tensor:
    """The logit of FCOS's score sqrt(sigmoid(cls) * sigmoid(centre-ness)), so that its sigmoid
    is that score (computed in log space: exact where the sigmoids saturate).

    Args:
        cls_logits: (B, L, C) float; centerness: (B, L) float logits.
    Returns:
        (B, L, C) float logits z with sigmoid(z) = sqrt(sigmoid(cls) * sigmoid(centerness)).
    """
    log_score = 0.5 * (F.logsigmoid(cls_logits) + F.logsigmoid(centerness)[..., None])
    return log_score - torch.log(-torch.expm1(log_score))


class FCOSPostProcessor:
    """At most ``detections_per_img`` detections per image.

    Per level and image: the (location, class) entries whose score
    sqrt(sigmoid(class logit) * sigmoid(centre-ness logit)) exceeds ``score_thresh``, at most
    the ``pre_nms_top_n`` best; their boxes from the predicted distances, clipped to the image,
    those with width or height <= ``min_size`` dropped. Then class-aware NMS at ``nms_thresh``
    per image over all levels and the ``detections_per_img`` best (as RetinaNetPostProcessor).
    """

    def __init__(
        self,
        score_thresh: float = 0.2,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        min_size: float = 0.0,
    ):
        self.selector = RetinaNetPostProcessor(
            DistanceCoder(),
            score_thresh=score_thresh,
            pre_nms_top_n=pre_nms_top_n,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            min_size=min_size,
        )

    @property
    def nms_thresh(self) -> float:
        return self.selector.nms_thresh

    def __call__(
        self,
        points: list[Tensor],
        cls_logits: list[Tensor],
        distances: list[Tensor],
        centerness: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of a batch.

        Args:
            points: per level (L_l, 2) float (x, y) pixels; cls_logits: per level (B, L_l, C);
            distances: per level (B, L_l, 4) pixels; centerness: per level (B, L_l) logits;
            image_sizes: B (height, width) before padding.
        Returns:
            B dicts: "boxes" (K, 4) float x1y1x2y2 pixels, "scores" (K,) float decreasing,
            "labels" (K,) int64 in 1..C.
        """
        locations = [torch.cat([p, p], dim=1) for p in points]
        logits = [centerness_weighted_logits(c, o) for c, o in zip(cls_logits, centerness)]
        return self.selector(locations, logits, distances, image_sizes)


def build_fcos_postprocessor(cfg) -> FCOSPostProcessor:
    """From cfg.MODEL.FCOS (INFERENCE_TH, PRE_NMS_TOP_N, NMS_TH), cfg.TEST.DETECTIONS_PER_IMG."""
    f = cfg.MODEL.FCOS
    return FCOSPostProcessor(
        score_thresh=f.INFERENCE_TH,
        pre_nms_top_n=f.PRE_NMS_TOP_N,
        nms_thresh=f.NMS_TH,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
    )

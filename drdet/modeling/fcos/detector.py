"""The FCOS detector (Tian et al., ICCV 2019): backbone + FPN (P3-P7), the FCOS head, then the
losses (training) or the detections (eval). Registered as MODEL.META_ARCHITECTURE "FCOS"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor

from drdet.modeling.anchor_generator import AnchorGenerator
from drdet.modeling.backbone import build_backbone
from drdet.modeling.detector import DenseDetector
from drdet.modeling.fcos.head import FCOSHead, build_fcos_head
from drdet.modeling.fcos.inference import FCOSPostProcessor, build_fcos_postprocessor
from drdet.modeling.fcos.loss import FCOSLossComputation, build_fcos_loss
from drdet.modeling.registry import META_ARCHITECTURES


def location_generator(strides: Sequence[int], convention: str = "exact") -> AnchorGenerator:
    """The locations of FCOS as the centres of one square anchor per cell whose side is the
    level's stride (torchvision's construction): with ``convention`` "exact" location (i, j) of
    a level of stride s is (s*j, s*i); "torchvision" takes s per axis as (padded image size) //
    (feature size), as torchvision does (it differs from s on P6/P7 when the padded size is not
    a multiple of 128); "maskrcnn_benchmark" gives (s*j + s/2, s*i + s/2), the FCOS authors'
    locations (their code: s*j + s//2; the strides are even)."""
    return AnchorGenerator([[float(s)] for s in strides], [1.0], strides, convention)


class FCOS(DenseDetector):
    """FCOS on a batch of images of different sizes (input format and arguments: see
    DenseDetector): the backbone also has ``strides``, one per FPN map; the anchor generator
    gives one anchor per location (see :func:`location_generator`), whose centres are the
    locations; the head, loss and post-processor are FCOS's."""

    head: FCOSHead
    loss: FCOSLossComputation
    postprocessor: FCOSPostProcessor

    def locations(self, features: list[Tensor], image_size: Sequence[int]) -> list[Tensor]:
        """Per level, the (H_l * W_l, 2) float (x, y) locations of ``features``' cells, pixels,
        for a padded batch of (height, width) ``image_size``."""
        anchors = self.anchor_generator(features, image_size)
        return [(a[:, :2] + a[:, 2:]) / 2 for a in anchors]

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``targets`` (one dict per image: "boxes" (K, 4) float x1y1x2y2 pixels of the
        given tensor, "labels" (K,) int64 in 1..C) -> {"loss_cls", "loss_reg",
        "loss_centerness"}. Degenerate boxes raise ValueError naming the image.

        Eval: -> one dict per image, "boxes" (K, 4), "scores" (K,), "labels" (K,) int64 in
        1..C, in pixels of the given tensor, or of ``original_sizes[i]`` (height, width).
        """
        batch = self.preprocess(images)
        features = self.backbone(batch.tensors)
        cls_logits, distances, centerness = self.head(features)
        points = self.locations(features, batch.tensors.shape[-2:])
        if self.training:
            if targets is None:
                raise ValueError("FCOS: `targets` are required in training mode")
            return self.loss(points, self.head.strides, cls_logits, distances, centerness, targets)
        detections = self.postprocessor(
            points, cls_logits, distances, centerness, batch.image_sizes
        )
        return self.rescale(detections, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def classification_scores(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """What the classification loss sees (as RetinaNet.classification_scores): (B, L, C)
        sigmoid class scores of every location, without centre-ness, and its (B, L) int64
        label from FCOS's assignment (k >= 1: class k, 0: background; none is ignored)."""
        batch = self.preprocess(images)
        features = self.backbone(batch.tensors)
        cls_logits, _, _ = self.head(features)
        points = self.locations(features, batch.tensors.shape[-2:])
        labels = self.loss.prepare_targets(points, self.head.strides, targets)["labels"]
        return torch.cat(cls_logits, dim=1).float().sigmoid(), labels


@META_ARCHITECTURES.register("FCOS")
def build_fcos(cfg) -> FCOS:
    """FCOS from ``cfg``: the backbone of MODEL.BACKBONE (P6 from C5 or P5 by
    MODEL.RETINANET.USE_C5), the head, loss and post-processing of MODEL.FCOS, the locations
    in MODEL.RETINANET.ANCHOR_CONVENTION."""
    backbone = build_backbone(cfg)
    strides = [int(s) for s in cast(Sequence[int], backbone.strides)]
    return FCOS(
        backbone,
        build_fcos_head(cfg, cast(int, backbone.out_channels), strides),
        location_generator(strides, cfg.MODEL.RETINANET.ANCHOR_CONVENTION),
        build_fcos_loss(cfg),
        build_fcos_postprocessor(cfg),
        pixel_mean=cfg.INPUT.PIXEL_MEAN,
        pixel_std=cfg.INPUT.PIXEL_STD,
        size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
    )

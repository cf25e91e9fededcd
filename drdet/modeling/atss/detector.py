"""ATSS (Zhang et al., CVPR 2020) as a dense detector: its anchors, head, loss and
post-processing built from the config and assembled by drdet.modeling.dense.DenseDetector.
Registered as MODEL.META_ARCHITECTURE "ATSS"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from drdet.modeling import dense
from drdet.modeling.anchor_generator import AnchorGenerator
from drdet.modeling.atss.config import check_atss_cfg
from drdet.modeling.atss.head import ATSSHead
from drdet.modeling.atss.loss import ATSSLossComputation
from drdet.modeling.backbone import build_backbone
from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.registry import META_ARCHITECTURES


class ATSS(dense.DenseDetector):
    """ATSS on a batch of images of different sizes (input format, arguments and forward: see
    :class:`~drdet.modeling.dense.DenseDetector`): one square anchor per location, ATSS's
    head, assignment and losses, and the dense post-processing on sqrt(class x centre-ness)."""

    head: ATSSHead
    loss: ATSSLossComputation
    postprocessor: dense.DensePostProcessor


def build_atss_anchors(cfg, strides: Sequence[int]) -> AnchorGenerator:
    """One square anchor per location of side MODEL.ATSS.ANCHOR_SCALE x the level's stride
    (64, 128, ..., 1024 px on P3-P7 by default), placed by MODEL.ANCHOR_GENERATOR.CONVENTION."""
    scale = cfg.MODEL.ATSS.ANCHOR_SCALE
    sizes = [[scale * s] for s in strides]
    return AnchorGenerator(sizes, [1.0], strides, cfg.MODEL.ANCHOR_GENERATOR.CONVENTION)


def build_atss_head(cfg, in_channels: int, num_levels: int) -> ATSSHead:
    """ATSSHead from MODEL.ATSS, MODEL.NUM_CLASSES and MODEL.GROUP_NORM."""
    args = dense.dense_head_args(cfg, cfg.MODEL.ATSS, in_channels)
    return ATSSHead(in_channels, num_levels=num_levels, **args)


def build_atss_loss(cfg, box_coder: BoxCoder) -> ATSSLossComputation:
    """The loss computation from MODEL.ATSS (its LOSS_TYPE through the registry)."""
    a = cfg.MODEL.ATSS
    return ATSSLossComputation(
        box_coder,
        **dense.dense_loss_args(cfg, cfg.MODEL.ATSS),
        topk=a.TOPK,
        reg_loss_weight=a.REG_LOSS_WEIGHT,
    )


def build_atss_postprocessor(cfg, box_coder: BoxCoder) -> dense.DensePostProcessor:
    """Post-processing at MODEL.ATSS's INFERENCE_TH, PRE_NMS_TOP_N and NMS_TH, on the score
    class score^e * centre-ness^(1 - e), e = MODEL.ATSS.CLASS_SCORE_EXPONENT."""
    return dense.build_dense_postprocessor(cfg, box_coder, cfg.MODEL.ATSS)


@META_ARCHITECTURES.register("ATSS", check=check_atss_cfg)
def build_atss(cfg) -> ATSS:
    """ATSS from ``cfg``: the backbone of MODEL.BACKBONE, the anchors, head, loss and
    post-processing of MODEL.ATSS."""
    backbone = build_backbone(cfg)
    strides = dense.backbone_strides(backbone)
    box_coder = BoxCoder(cfg.MODEL.ATSS.BBOX_REG_WEIGHTS)
    return ATSS(
        backbone,
        build_atss_head(cfg, cast(int, backbone.out_channels), len(strides)),
        build_atss_anchors(cfg, strides),
        build_atss_loss(cfg, box_coder),
        build_atss_postprocessor(cfg, box_coder),
        **dense.input_args(cfg),
    )

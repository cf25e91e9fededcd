"""FCOS (Tian et al., ICCV 2019) as a dense detector: its locations, head, loss and
post-processing built from the config and assembled by drdet.modeling.dense.DenseDetector.
Registered as MODEL.META_ARCHITECTURE "FCOS"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from drdet.modeling import dense
from drdet.modeling.backbone import build_backbone
from drdet.modeling.fcos.box_coder import DistanceCoder, location_generator
from drdet.modeling.fcos.config import check_fcos_cfg
from drdet.modeling.fcos.head import FCOSHead
from drdet.modeling.fcos.loss import FCOSLossComputation
from drdet.modeling.fcos.targets import level_ranges
from drdet.modeling.registry import META_ARCHITECTURES
from drdet.utils.checks import require


class FCOS(dense.DenseDetector):
    """FCOS on a batch of images of different sizes (input format, arguments and forward: see
    :class:`~drdet.modeling.dense.DenseDetector`): the backbone also has ``strides``, one per FPN
    map; the anchor generator gives one anchor per location, whose centres are the locations
    (:func:`~drdet.modeling.fcos.box_coder.location_generator`); the head, loss and box coding
    are FCOS's."""

    head: FCOSHead
    loss: FCOSLossComputation
    postprocessor: dense.DensePostProcessor


def build_fcos_head(cfg, in_channels: int, strides: Sequence[int]) -> FCOSHead:
    """FCOSHead from MODEL.FCOS, MODEL.NUM_CLASSES and MODEL.GROUP_NORM."""
    return FCOSHead(
        in_channels, strides=strides, **dense.dense_head_args(cfg, cfg.MODEL.FCOS, in_channels)
    )


def build_fcos_loss(cfg, strides: Sequence[int]) -> FCOSLossComputation:
    """The loss computation from MODEL.FCOS (its LOSS_TYPE through the registry) for a backbone
    of ``strides``."""
    f = cfg.MODEL.FCOS
    require(
        len(f.SIZES_OF_INTEREST) == len(strides) - 1,
        "MODEL.FCOS.SIZES_OF_INTEREST",
        f.SIZES_OF_INTEREST,
        f"needs one bound between each two levels of the backbone, whose strides are "
        f"{tuple(strides)}",
    )
    return FCOSLossComputation(
        **dense.dense_loss_args(cfg, cfg.MODEL.FCOS),
        strides=strides,
        ranges=level_ranges(f.SIZES_OF_INTEREST, len(strides)),
        center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
        ignore_outside_center=f.IGNORE_OUTSIDE_CENTER,
        reg_loss=f.REG_LOSS,
        centerness_weighted_reg=f.CENTERNESS_WEIGHTED_REG,
    )


def build_fcos_postprocessor(cfg) -> dense.DensePostProcessor:
    """Post-processing at MODEL.FCOS's INFERENCE_TH, PRE_NMS_TOP_N and NMS_TH, on the score
    class score^e * centre-ness^(1 - e), e = MODEL.FCOS.CLASS_SCORE_EXPONENT."""
    return dense.build_dense_postprocessor(cfg, DistanceCoder(), cfg.MODEL.FCOS)


@META_ARCHITECTURES.register("FCOS", check=check_fcos_cfg)
def build_fcos(cfg) -> FCOS:
    """FCOS from ``cfg``: the backbone of MODEL.BACKBONE, the head, loss and post-processing of
    MODEL.FCOS, the locations in MODEL.ANCHOR_GENERATOR.CONVENTION."""
    backbone = build_backbone(cfg)
    strides = dense.backbone_strides(backbone)
    return FCOS(
        backbone,
        build_fcos_head(cfg, cast(int, backbone.out_channels), strides),
        location_generator(strides, cfg.MODEL.ANCHOR_GENERATOR.CONVENTION),
        build_fcos_loss(cfg, strides),
        build_fcos_postprocessor(cfg),
        **dense.input_args(cfg),
    )

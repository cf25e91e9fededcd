"""RetinaNet (Lin et al., 2017) as a dense detector: its anchors, head, loss and post-processing
built from the config and assembled by drdet.modeling.dense.DenseDetector. Registered as
MODEL.META_ARCHITECTURE "RetinaNet"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from drdet.modeling import dense
from drdet.modeling.anchor_generator import AnchorGenerator
from drdet.modeling.backbone import build_backbone
from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.matcher import Matcher
from drdet.modeling.registry import META_ARCHITECTURES
from drdet.modeling.retinanet.config import check_retinanet_cfg
from drdet.modeling.retinanet.head import RetinaNetHead
from drdet.modeling.retinanet.loss import RetinaNetLossComputation
from drdet.utils.checks import require


class RetinaNet(dense.DenseDetector):
    """RetinaNet on a batch of images of different sizes (input format, arguments and forward:
    see :class:`~drdet.modeling.dense.DenseDetector`), with the RetinaNet head, anchors, loss and
    post-processor."""

    head: RetinaNetHead
    loss: RetinaNetLossComputation
    postprocessor: dense.DensePostProcessor


def build_retinanet_anchors(cfg, strides: Sequence[int]) -> AnchorGenerator:
    """AnchorGenerator from MODEL.RETINANET at the backbone's ``strides``: level l gets sizes
    ANCHOR_SIZES[l] * OCTAVE**(k / SCALES_PER_OCTAVE) for k = 0 .. SCALES_PER_OCTAVE-1 (32, 40.3,
    50.8 for P3 by default; truncated to integers, 32, 40, 50, with the "torchvision"
    MODEL.ANCHOR_GENERATOR.CONVENTION)."""
    rcfg = cfg.MODEL.RETINANET
    convention = cfg.MODEL.ANCHOR_GENERATOR.CONVENTION
    require(
        len(rcfg.ANCHOR_SIZES) == len(strides),
        "MODEL.RETINANET.ANCHOR_SIZES",
        rcfg.ANCHOR_SIZES,
        f"needs one size per level of the backbone, whose strides are {tuple(strides)}",
    )
    scales = [rcfg.OCTAVE ** (k / rcfg.SCALES_PER_OCTAVE) for k in range(rcfg.SCALES_PER_OCTAVE)]
    sizes = [[size * s for s in scales] for size in rcfg.ANCHOR_SIZES]
    if convention == "torchvision":
        sizes = [[float(int(s)) for s in level] for level in sizes]
    return AnchorGenerator(sizes, rcfg.ASPECT_RATIOS, strides, convention)


def build_retinanet_head(cfg, in_channels: int, num_anchors: int) -> RetinaNetHead:
    """RetinaNetHead from MODEL.RETINANET, MODEL.NUM_CLASSES and MODEL.GROUP_NORM."""
    args = dense.dense_head_args(cfg, cfg.MODEL.RETINANET, in_channels)
    return RetinaNetHead(in_channels, num_anchors=num_anchors, **args)


def build_retinanet_loss(cfg, box_coder: BoxCoder) -> RetinaNetLossComputation:
    """The loss computation from MODEL.RETINANET (its LOSS_TYPE through the registry)."""
    rcfg = cfg.MODEL.RETINANET
    matcher = Matcher(rcfg.FG_IOU_THRESHOLD, rcfg.BG_IOU_THRESHOLD, rcfg.ALLOW_LOW_QUALITY_MATCHES)
    return RetinaNetLossComputation(
        matcher,
        box_coder,
        **dense.dense_loss_args(cfg, cfg.MODEL.RETINANET),
        reg_beta=rcfg.BBOX_REG_BETA,
        reg_norm=rcfg.BBOX_REG_WEIGHT,
    )


def build_retinanet_postprocessor(cfg, box_coder: BoxCoder) -> dense.DensePostProcessor:
    """Post-processing at MODEL.RETINANET's INFERENCE_TH, PRE_NMS_TOP_N and NMS_TH."""
    return dense.build_dense_postprocessor(cfg, box_coder, cfg.MODEL.RETINANET)


@META_ARCHITECTURES.register("RetinaNet", check=check_retinanet_cfg)
def build_retinanet(cfg) -> RetinaNet:
    """RetinaNet (with any registered backbone and classification loss) from ``cfg``."""
    backbone = build_backbone(cfg)
    anchors = build_retinanet_anchors(cfg, dense.backbone_strides(backbone))
    box_coder = BoxCoder(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS)
    return RetinaNet(
        backbone,
        build_retinanet_head(
            cfg, cast(int, backbone.out_channels), anchors.num_anchors_per_location
        ),
        anchors,
        build_retinanet_loss(cfg, box_coder),
        build_retinanet_postprocessor(cfg, box_coder),
        **dense.input_args(cfg),
    )

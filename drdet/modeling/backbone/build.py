"""build_backbone(cfg): the backbone registered as MODEL.BACKBONE.CONV_BODY; here the
ResNet/ResNeXt-FPN bodies (``R-<depth>-FPN-RETINANET``) with their config nodes MODEL.RESNETS and
MODEL.FPN, and MODEL.GROUP_NORM, the GroupNorm of the bodies, the FPN and the heads."""

import functools

import torch
from torch import nn

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_config_check
from drdet.layers.misc import NORMS, make_norm_factory
from drdet.modeling.backbone.fpn import FPN, LastLevelP6P7
from drdet.modeling.backbone.resnet import ResNet
from drdet.modeling.registry import BACKBONES
from drdet.utils.checks import require

_RESNETS = CN()
# 1 for ResNet; 32 (x8d) or 64 (x4d) for ResNeXt.
_RESNETS.NUM_GROUPS = 1
# Channels per group of the res2 bottleneck 3x3 conv (doubled at each stage). Basic-block bodies
# (R-18/34) use NUM_GROUPS * WIDTH_PER_GROUP as the res2 output width and ignore RES2_OUT_CHANNELS.
_RESNETS.WIDTH_PER_GROUP = 64
# True: the stride of a bottleneck sits in its first 1x1 conv (MSRA / Caffe2 weights);
# False: in its 3x3 conv (torchvision and FAIR ResNeXt weights).
_RESNETS.STRIDE_IN_1X1 = True
_RESNETS.STEM_OUT_CHANNELS = 64
_RESNETS.RES2_OUT_CHANNELS = 256
# Channels of every FPN output map.
_RESNETS.BACKBONE_OUT_CHANNELS = 256
# Must be 1 for the FPN-RETINANET bodies (P3-P7 need a stride-32 C5).
_RESNETS.RES5_DILATION = 1
# Normalisation of the ResNet body: one of drdet.layers.misc.NORMS (FrozenBN, BN, GN, SyncBN).
_RESNETS.NORM = "FrozenBN"
add_config_node("MODEL.RESNETS", _RESNETS)

_FPN = CN()
_FPN.USE_GN = False
_FPN.USE_RELU = False
# True: P6 by a stride-2 3x3 conv on C5 (maskrcnn-benchmark's RetinaNet); False: on P5
# (torchvision's RetinaNet and FCOS, the FCOS paper).
_FPN.USE_C5 = True
add_config_node("MODEL.FPN", _FPN)

_GROUP_NORM = CN()
# Channels per group; -1: use NUM_GROUPS groups instead.
_GROUP_NORM.DIM_PER_GP = -1
_GROUP_NORM.NUM_GROUPS = 32
_GROUP_NORM.EPSILON = 1e-5
add_config_node("MODEL.GROUP_NORM", _GROUP_NORM)


def check_group_norm_cfg(cfg) -> None:
    gn = cfg.MODEL.GROUP_NORM
    require(gn.NUM_GROUPS >= 1, "MODEL.GROUP_NORM.NUM_GROUPS", gn.NUM_GROUPS, "must be >= 1")
    require(
        gn.DIM_PER_GP == -1 or gn.DIM_PER_GP >= 1,
        "MODEL.GROUP_NORM.DIM_PER_GP",
        gn.DIM_PER_GP,
        "must be -1 or >= 1",
    )


register_config_check("MODEL.GROUP_NORM", check_group_norm_cfg)


class ResNetFPN(nn.Module):
    """``body`` (:class:`ResNet`, returning C3-C5) followed by ``fpn`` (:class:`FPN` with P6/P7).

    State-dict keys: ``body.stem.conv1.weight``, ``body.layer1.0.conv1.weight``, ...,
    ``fpn.fpn_inner2.weight`` ... ``fpn.fpn_layer4.weight``, ``fpn.top_blocks.p6.weight``,
    ``fpn.top_blocks.p7.weight``.
    forward: images (N, 3, H, W) float -> [P3, P4, P5, P6, P7], each
        (N, out_channels, ceil(H / s), ceil(W / s)) for s in ``strides`` = (8, 16, 32, 64, 128).
    """

    def __init__(self, body: ResNet, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels: int = fpn.out_channels
        self.strides = tuple(body.strides) + (body.strides[-1] * 2, body.strides[-1] * 4)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        return self.fpn(self.body(images))


def build_backbone(cfg) -> nn.Module:
    """The backbone registered as ``cfg.MODEL.BACKBONE.CONV_BODY`` (drdet.modeling.registry)."""
    return BACKBONES.get(cfg.MODEL.BACKBONE.CONV_BODY)(cfg)


def check_resnet_fpn_cfg(cfg) -> None:
    """ValueError naming the key for settings the ``R-*-FPN-RETINANET`` bodies cannot build
    (MODEL.BACKBONE.FREEZE_CONV_BODY_AT, MODEL.RESNETS)."""
    freeze = cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT
    require(
        0 <= freeze <= 5,
        "MODEL.BACKBONE.FREEZE_CONV_BODY_AT",
        freeze,
        "must be in 0..5 (0 none, 1 stem, 2 stem+res2, ...)",
    )
    r = cfg.MODEL.RESNETS
    require(r.NORM in NORMS, "MODEL.RESNETS.NORM", r.NORM, f"must be one of {list(NORMS)}")
    for key in (
        "NUM_GROUPS",
        "WIDTH_PER_GROUP",
        "STEM_OUT_CHANNELS",
        "RES2_OUT_CHANNELS",
        "BACKBONE_OUT_CHANNELS",
    ):
        require(r[key] >= 1, f"MODEL.RESNETS.{key}", r[key], "must be >= 1")
    require(
        r.RES5_DILATION == 1,
        "MODEL.RESNETS.RES5_DILATION",
        r.RES5_DILATION,
        "the FPN-RETINANET bodies need a stride-32 C5 (dilation 1)",
    )
    if cfg.MODEL.BACKBONE.CONV_BODY in ("R-18-FPN-RETINANET", "R-34-FPN-RETINANET"):
        require(
            r.NUM_GROUPS == 1,
            "MODEL.RESNETS.NUM_GROUPS",
            r.NUM_GROUPS,
            "basic-block bodies (R-18/34) have no grouped convs",
        )


def build_resnet_fpn(cfg, depth: int) -> ResNetFPN:
    """ResNet/ResNeXt-``depth`` + FPN with P6/P7 (an ``R-<depth>-FPN-RETINANET`` body), from
    MODEL.RESNETS, MODEL.FPN, MODEL.GROUP_NORM and MODEL.BACKBONE.FREEZE_CONV_BODY_AT."""
    check_resnet_fpn_cfg(cfg)
    r, gn = cfg.MODEL.RESNETS, cfg.MODEL.GROUP_NORM
    gn_factory = make_norm_factory("GN", gn.DIM_PER_GP, gn.NUM_GROUPS, gn.EPSILON)
    norm = gn_factory if r.NORM == "GN" else make_norm_factory(r.NORM)
    body = ResNet(
        depth=depth,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        norm=norm,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
        return_stages=(2, 3, 4),
    )
    out_channels = r.BACKBONE_OUT_CHANNELS
    use_c5 = cfg.MODEL.FPN.USE_C5
    top_blocks = LastLevelP6P7(
        body.out_channels[-1] if use_c5 else out_channels, out_channels, use_c5=use_c5
    )
    fpn = FPN(
        body.out_channels,
        out_channels,
        top_blocks=top_blocks,
        norm_layer=gn_factory if cfg.MODEL.FPN.USE_GN else None,
        use_relu=cfg.MODEL.FPN.USE_RELU,
    )
    return ResNetFPN(body, fpn)


for _depth in (18, 34, 50, 101, 152):
    BACKBONES.register(
        f"R-{_depth}-FPN-RETINANET",
        functools.partial(build_resnet_fpn, depth=_depth),
        check=check_resnet_fpn_cfg,
    )

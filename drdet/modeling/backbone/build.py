"""build_backbone(cfg): the backbone registered as MODEL.BACKBONE.CONV_BODY; here the
ResNet/ResNeXt-FPN bodies of RetinaNet (from MODEL.BACKBONE / RESNETS / FPN)."""

import functools

import torch
from torch import nn

from drdet.layers.misc import make_norm_factory
from drdet.modeling.backbone.fpn import FPN, LastLevelP6P7
from drdet.modeling.backbone.resnet import ResNet
from drdet.modeling.registry import BACKBONES
from drdet.utils.checks import require


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


def check_resnet_cfg(cfg) -> None:
    """ValueError naming the key for MODEL.RESNETS settings the ``R-*-FPN-RETINANET`` bodies
    cannot build (called by drdet.config.validate_cfg and by the builder)."""
    r = cfg.MODEL.RESNETS
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
    """ResNet/ResNeXt-``depth`` + FPN with P6/P7 (an ``R-<depth>-FPN-RETINANET`` body)."""
    check_resnet_cfg(cfg)
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
    use_c5 = cfg.MODEL.RETINANET.USE_C5
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
        f"R-{_depth}-FPN-RETINANET", functools.partial(build_resnet_fpn, depth=_depth)
    )

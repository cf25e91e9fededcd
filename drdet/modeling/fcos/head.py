"""The FCOS head: a classification tower and a box tower (conv3x3 + GroupNorm + ReLU) shared by
all levels; class logits from the first, (l, t, r, b) distances and centre-ness from the second."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdet.layers.winograd import WinogradConv2d, apply_levels
from drdet.modeling.retinanet.head import _tower, init_dense_head


class FCOSHead(nn.Module):
    """Per location of every level: ``num_classes`` class logits (sigmoid, no background
    column), 4 distances (l, t, r, b) to the box sides in pixels, and a centre-ness logit.

    The distances are ``relu(scales[l] * x) * strides[l]`` for the box tower's raw output x at
    level l: x is in units of the level's stride (torchvision's normalised regression), and
    ``scales`` (learnt, one per level, initialised to 1) lets each level rescale it (the FCOS
    paper). The centre-ness branch sits on the box tower (torchvision and the FCOS authors'
    later code). Convolutions start from normal(0, 0.01) with zero bias; the class bias starts
    at -log((1 - p) / p) so that every score starts at ``prior_prob``.

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C.
        strides: stride of each level, pixels (8, 16, 32, 64, 128 for P3-P7).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int],
        num_convs: int = 4,
        use_gn: bool = True,
        gn_groups: int = 32,
        gn_eps: float = 1e-5,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"FCOSHead: prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.strides = [int(s) for s in strides]
        self.cls_tower = _tower(in_channels, num_convs, use_gn, gn_groups, gn_eps)
        self.bbox_tower = _tower(in_channels, num_convs, use_gn, gn_groups, gn_eps)
        self.cls_logits = WinogradConv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = WinogradConv2d(in_channels, 4, kernel_size=3, padding=1)
        self.centerness = WinogradConv2d(in_channels, 1, kernel_size=3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        init_dense_head(self, self.cls_logits, prior_prob)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Predictions for FPN ``features`` (list of (B, in_channels, H_l, W_l), one per stride).

        Returns, per level, rows in (y, x) order (the locations' order):
            cls_logits: (B, H_l * W_l, C) float.
            distances: (B, H_l * W_l, 4) float (l, t, r, b) >= 0, pixels.
            centerness: (B, H_l * W_l) float logits.
        """
        if len(features) != len(self.strides):
            raise ValueError(
                f"FCOSHead: {len(features)} feature maps for {len(self.strides)} strides"
            )
        cls_maps = apply_levels(self.cls_logits, apply_levels(self.cls_tower, features))
        box_features = apply_levels(self.bbox_tower, features)
        box_maps = apply_levels(self.bbox_pred, box_features)
        ctr_maps = apply_levels(self.centerness, box_features)
        distances = [
            F.relu(self.scales[level] * m) * stride
            for level, (m, stride) in enumerate(zip(box_maps, self.strides))
        ]
        return (
            [_flatten(m) for m in cls_maps],
            [_flatten(m) for m in distances],
            [_flatten(m)[..., 0] for m in ctr_maps],
        )


def _flatten(prediction: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H * W, K)."""
    b, k = prediction.shape[:2]
    return prediction.permute(0, 2, 3, 1).reshape(b, -1, k)


def build_fcos_head(cfg, in_channels: int, strides: Sequence[int]) -> FCOSHead:
    """FCOSHead from cfg.MODEL.FCOS, MODEL.RETINANET.NUM_CLASSES (counts the background) and
    MODEL.GROUP_NORM (DIM_PER_GP > 0 gives in_channels / DIM_PER_GP groups)."""
    fcfg, gn = cfg.MODEL.FCOS, cfg.MODEL.GROUP_NORM
    groups = gn.NUM_GROUPS
    if gn.DIM_PER_GP > 0:
        if in_channels % gn.DIM_PER_GP:
            raise ValueError(
                f"MODEL.GROUP_NORM.DIM_PER_GP {gn.DIM_PER_GP} does not divide "
                f"{in_channels} channels"
            )
        groups = in_channels // gn.DIM_PER_GP
    return FCOSHead(
        in_channels,
        num_classes=cfg.MODEL.RETINANET.NUM_CLASSES - 1,
        strides=strides,
        num_convs=fcfg.NUM_CONVS,
        use_gn=fcfg.USE_GN,
        gn_groups=groups,
        gn_eps=gn.EPSILON,
        prior_prob=fcfg.PRIOR_PROB,
    )

"""The RetinaNet head: a classification and a box-regression conv tower shared by all levels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from drdet.layers.level_packing import PackedLevels, apply_packed, packable
from drdet.layers.misc import group_norm_groups
from drdet.layers.winograd import WinogradConv2d, apply_levels


def init_dense_head(head: nn.Module, cls_logits: nn.Conv2d, prior_prob: float) -> None:
    """The dense heads' initialisation (RetinaNet, FCOS): every convolution of ``head``
    normal(0, 0.01) with zero bias, then the classifier's bias at -log((1 - p) / p), so that every
    class starts at probability ``prior_prob``."""
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    assert cls_logits.bias is not None
    nn.init.constant_(cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))


def _tower(
    channels: int, num_convs: int, use_gn: bool, gn_groups: int, gn_eps: float
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(WinogradConv2d(channels, channels, kernel_size=3, padding=1))
        if use_gn:
            layers.append(nn.GroupNorm(gn_groups, channels, eps=gn_eps))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Two towers of ``num_convs`` conv3x3(+GroupNorm)+ReLU, then a conv3x3 predicting, per
    anchor, ``num_classes`` logits (sigmoid, no background column) and 4 box deltas.

    Each convolution runs over all levels in one call: on CUDA, and on the CPU without
    gradients (inference), with the levels packed side by side on one canvas with zero gaps,
    GroupNorm kept per level and per image (drdet/layers/level_packing.py); on the CPU in
    training, where the tower's convolutions take the Winograd path, as a list of maps
    (drdet/layers/winograd.py). CPU training without the Winograd path (few channels, as in the
    demo) keeps one call per level: there the canvas's gaps cost more than the calls saved
    (docs/BENCHMARKS.md). ``pack_levels``: "auto" (this rule), True (pack wherever it is
    exact) or False (never). Every way gives the per-level output.

    Convolutions are initialised from normal(0, 0.01) with zero bias, except the class logits'
    bias, which starts at -log((1 - p) / p) so that every score starts at ``prior_prob``.

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C (maskrcnn-benchmark's NUM_CLASSES - 1).
        num_anchors: anchors per location A.
    """

    pack_levels: bool | str = "auto"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        num_convs: int = 4,
        use_gn: bool = False,
        gn_groups: int = 32,
        gn_eps: float = 1e-5,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"RetinaNetHead: prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_tower = _tower(in_channels, num_convs, use_gn, gn_groups, gn_eps)
        self.bbox_tower = _tower(in_channels, num_convs, use_gn, gn_groups, gn_eps)
        self.cls_logits = WinogradConv2d(
            in_channels, num_anchors * num_classes, kernel_size=3, padding=1
        )
        self.bbox_pred = WinogradConv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        init_dense_head(self, self.cls_logits, prior_prob)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Predictions for FPN ``features`` (list of (B, in_channels, H_l, W_l)).

        Returns:
            cls_logits: per level (B, H_l * W_l * A, C) float.
            box_deltas: per level (B, H_l * W_l * A, 4) float.
            Rows are ordered (y, x, anchor), the order of AnchorGenerator's anchors.
        """
        if self.packs(features):
            packed, canvas = PackedLevels.pack(features)
            cls_maps = packed.unpack(self.cls_logits(apply_packed(self.cls_tower, canvas, packed)))
            box_maps = packed.unpack(self.bbox_pred(apply_packed(self.bbox_tower, canvas, packed)))
        else:
            cls_maps, box_maps = self._per_level(features)
        return (
            [_flatten(m, self.num_classes) for m in cls_maps],
            [_flatten(m, 4) for m in box_maps],
        )

    def packs(self, features: list[Tensor]) -> bool:
        """Whether :meth:`forward` packs these levels on one canvas (see ``pack_levels``): more
        than one level, layers that pack exactly, and, for "auto", not the CPU Winograd path
        (which already convolves all levels in one call, without the canvas's gaps) and not
        CPU training."""
        if (
            self.pack_levels is False
            or len(features) < 2
            or not packable([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred])
        ):
            return False
        if self.pack_levels is True:
            return True
        first = self.cls_tower[0] if len(self.cls_tower) else self.cls_logits
        if isinstance(first, WinogradConv2d) and first.uses_winograd(features):
            return False
        return features[0].device.type != "cpu" or not torch.is_grad_enabled()

    def _per_level(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(class maps, box maps) per level, layer by layer over the list of levels (one
        Winograd call per layer where it applies)."""
        cls_maps = apply_levels(self.cls_logits, apply_levels(self.cls_tower, features))
        box_maps = apply_levels(self.bbox_pred, apply_levels(self.bbox_tower, features))
        return cls_maps, box_maps


def _flatten(prediction: Tensor, channels: int) -> Tensor:
    """(B, A * K, H, W) -> (B, H * W * A, K)."""
    b, _, h, w = prediction.shape
    return prediction.view(b, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels)


def build_retinanet_head(cfg, in_channels: int, num_anchors: int) -> RetinaNetHead:
    """RetinaNetHead from cfg.MODEL.RETINANET (NUM_CLASSES counts the background) and
    cfg.MODEL.GROUP_NORM."""
    rcfg, gn = cfg.MODEL.RETINANET, cfg.MODEL.GROUP_NORM
    groups = (
        group_norm_groups(in_channels, gn.DIM_PER_GP, gn.NUM_GROUPS)
        if rcfg.USE_GN
        else gn.NUM_GROUPS
    )  # unused without GN
    return RetinaNetHead(
        in_channels,
        num_classes=rcfg.NUM_CLASSES - 1,
        num_anchors=num_anchors,
        num_convs=rcfg.NUM_CONVS,
        use_gn=rcfg.USE_GN,
        gn_groups=groups,
        gn_eps=gn.EPSILON,
        prior_prob=rcfg.PRIOR_PROB,
    )

"""What the dense heads share (RetinaNet, FCOS, ATSS): two towers of conv3x3(+GroupNorm)+ReLU
shared by all levels, one for classification and one for the boxes, with predictor
convolutions on each; their initialisation; and the way they run over the levels.

Each convolution runs over all levels in one call: on CUDA, and on the CPU without gradients
(inference), with the levels packed side by side on one canvas with zero gaps, GroupNorm kept
per level and per image (drdet/layers/level_packing.py); on the CPU in training, where the
towers' convolutions take the Winograd path, as a list of maps (drdet/layers/winograd.py). CPU
training without the Winograd path (few channels, as in the demo) keeps one call per level:
there the canvas's gaps cost more than the calls saved (docs/BENCHMARKS.md). Every way gives
the per-level output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from drdet.layers.level_packing import PackedLevels, apply_packed, packable
from drdet.layers.misc import group_norm_groups
from drdet.layers.winograd import WinogradConv2d, apply_levels


def conv_tower(
    channels: int, num_convs: int, use_gn: bool, gn_groups: int, gn_eps: float
) -> nn.Sequential:
    """``num_convs`` x (conv3x3 ``channels`` -> ``channels``, GroupNorm when ``use_gn``, ReLU)."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(WinogradConv2d(channels, channels, kernel_size=3, padding=1))
        if use_gn:
            layers.append(nn.GroupNorm(gn_groups, channels, eps=gn_eps))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_dense_head(head: nn.Module, cls_logits: nn.Conv2d, prior_prob: float) -> None:
    """Every convolution of ``head`` normal(0, 0.01) with zero bias, then the classifier's bias
    at -log((1 - p) / p), so that every class starts at probability ``prior_prob``."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"{type(head).__name__}: prior_prob must be in (0, 1), got {prior_prob}")
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    assert cls_logits.bias is not None
    nn.init.constant_(cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))


def head_norm_groups(cfg, in_channels: int, use_gn: bool) -> int:
    """GroupNorm groups of a head's towers from MODEL.GROUP_NORM (DIM_PER_GP > 0: in_channels /
    DIM_PER_GP, else NUM_GROUPS); NUM_GROUPS, unused, without GroupNorm."""
    gn = cfg.MODEL.GROUP_NORM
    return group_norm_groups(in_channels, gn.DIM_PER_GP, gn.NUM_GROUPS) if use_gn else gn.NUM_GROUPS


def flatten_levels(maps: Sequence[Tensor], channels: int) -> list[Tensor]:
    """Per level (B, A * K, H, W) -> (B, H * W * A, K), rows in (y, x, anchor) order (the order
    of drdet.modeling.anchor_generator.AnchorGenerator's anchors); K = ``channels``."""
    out = []
    for m in maps:
        b, _, h, w = m.shape
        out.append(m.view(b, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels))
    return out


class DenseHead(nn.Module):
    """A class tower and a box tower of ``num_convs`` conv3x3(+GroupNorm)+ReLU each, shared by
    all levels. Subclasses add their predictor convolutions, name them in :meth:`predictors`
    and get their per-level maps from :meth:`run`.

    ``pack_levels``: "auto" (the rule of the module docstring), True (pack wherever it is exact)
    or False (never).

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C.
    """

    pack_levels: bool | str = "auto"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_convs: int = 4,
        use_gn: bool = False,
        gn_groups: int = 32,
        gn_eps: float = 1e-5,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = conv_tower(in_channels, num_convs, use_gn, gn_groups, gn_eps)
        self.bbox_tower = conv_tower(in_channels, num_convs, use_gn, gn_groups, gn_eps)

    def predictors(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(the predictor convolutions on the class tower, those on the box tower)."""
        raise NotImplementedError

    def run(self, features: list[Tensor]) -> list[list[Tensor]]:
        """The per-level maps of each predictor (:meth:`predictors`: those of the class tower,
        then those of the box tower), each a list over the levels of (B, K, H_l, W_l) maps."""
        cls_predictors, box_predictors = self.predictors()
        if self.packs(features):
            packed, canvas = PackedLevels.pack(features)
            cls = apply_packed(self.cls_tower, canvas, packed)
            box = apply_packed(self.bbox_tower, canvas, packed)
            return [packed.unpack(p(cls)) for p in cls_predictors] + [
                packed.unpack(p(box)) for p in box_predictors
            ]
        cls_levels = apply_levels(self.cls_tower, features)
        box_levels = apply_levels(self.bbox_tower, features)
        return [apply_levels(p, cls_levels) for p in cls_predictors] + [
            apply_levels(p, box_levels) for p in box_predictors
        ]

    def packs(self, features: list[Tensor]) -> bool:
        """Whether :meth:`run` packs these levels on one canvas (``pack_levels``): more than one
        level, layers that pack exactly, and, for "auto", not the CPU Winograd path (which
        already convolves all levels in one call, without the canvas's gaps) and not CPU
        training."""
        cls_predictors, box_predictors = self.predictors()
        layers = [*self.cls_tower, *self.bbox_tower, *cls_predictors, *box_predictors]
        if self.pack_levels is False or len(features) < 2 or not packable(layers):
            return False
        if self.pack_levels is True:
            return True
        first = layers[0] if layers else None
        if isinstance(first, WinogradConv2d) and first.uses_winograd(features):
            return False
        return features[0].device.type != "cpu" or not torch.is_grad_enabled()

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
from typing import Any

import torch
from torch import Tensor, nn

from drdet.layers.level_packing import PackedLevels, apply_packed, packable
from drdet.layers.misc import group_norm_groups
from drdet.layers.winograd import WinogradConv2d, apply_levels
from drdet.modeling.dense.config import num_foreground_classes
from drdet.modeling.dense.outputs import DenseOutputs


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


def dense_head_args(cfg, node, in_channels: int) -> dict[str, Any]:
    """The keyword arguments every dense head takes: num_classes (MODEL.NUM_CLASSES - 1),
    num_convs, use_gn and prior_prob from the detector's config `node` (its NUM_CONVS, USE_GN,
    PRIOR_PROB), gn_groups and gn_eps from MODEL.GROUP_NORM."""
    return {
        "num_classes": num_foreground_classes(cfg),
        "num_convs": node.NUM_CONVS,
        "use_gn": node.USE_GN,
        "gn_groups": head_norm_groups(cfg, in_channels, node.USE_GN),
        "gn_eps": cfg.MODEL.GROUP_NORM.EPSILON,
        "prior_prob": node.PRIOR_PROB,
    }


def flatten_levels(maps: Sequence[Tensor], channels: int) -> list[Tensor]:
    """Per level (B, A * K, H, W) -> (B, H * W * A, K), rows in (y, x, anchor) order (the order
    of drdet.modeling.anchor_generator.AnchorGenerator's anchors); K = ``channels``."""
    out = []
    for m in maps:
        b, _, h, w = m.shape
        levels = m.view(b, -1, channels, h, w).permute(0, 3, 4, 1, 2)
        if not isinstance(h * w, int):
            # symbolic sizes (torch.export): a copy, since reshape's view-or-copy choice would
            # guard on h * w != 1 and the program would refuse a one-cell level (P7 <= 128 px)
            levels = levels.clone(memory_format=torch.contiguous_format)
        out.append(levels.reshape(b, -1, channels))
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


class CenternessHead(DenseHead):
    """One prediction per location of every level: ``num_classes`` class logits (sigmoid, no
    background column) from the class tower; 4 box outputs and a centre-ness logit from the box
    tower (FCOS's and ATSS's layout). The box outputs are ``scales[l] * x`` for the raw output x
    at level l, with a learnt scale per level initialised to 1, then :meth:`box_outputs`.
    Convolutions start from normal(0, 0.01) with zero bias; the class bias starts at
    -log((1 - p) / p) so that every score starts at ``prior_prob``.

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C.
        num_levels: pyramid levels (5 for P3-P7), one scale each.
        prior_prob: the class scores' initial probability.
        use_gn, tower: the towers' GroupNorm (on by default here) and :class:`DenseHead`'s
            other arguments.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        prior_prob: float = 0.01,
        use_gn: bool = True,
        **tower: Any,
    ):
        super().__init__(in_channels, num_classes, use_gn=use_gn, **tower)
        self.cls_logits = WinogradConv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = WinogradConv2d(in_channels, 4, kernel_size=3, padding=1)
        self.centerness = WinogradConv2d(in_channels, 1, kernel_size=3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        init_dense_head(self, self.cls_logits, prior_prob)

    def predictors(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return [self.cls_logits], [self.bbox_pred, self.centerness]

    def box_outputs(self, scaled: list[Tensor]) -> list[Tensor]:
        """The box maps (B, 4, H_l, W_l) per level from the scaled raw ones: as they are here."""
        return scaled

    def forward(self, features: list[Tensor]) -> DenseOutputs:
        """Predictions for FPN ``features`` (list of (B, in_channels, H_l, W_l), one per level):
        per level, rows in (y, x) order (the locations' order), ``cls_logits`` (B, H_l * W_l,
        C), ``box_regression`` (B, H_l * W_l, 4) (:meth:`box_outputs`) and ``centerness``
        (B, H_l * W_l) logits."""
        num_levels = self.scales.shape[0]
        if len(features) != num_levels:
            name = type(self).__name__
            raise ValueError(f"{name}: {len(features)} feature maps for {num_levels} levels")
        cls_maps, box_maps, ctr_maps = self.run(features)
        boxes = self.box_outputs([self.scales[level] * m for level, m in enumerate(box_maps)])
        return DenseOutputs(
            flatten_levels(cls_maps, self.num_classes),
            flatten_levels(boxes, 4),
            [m[..., 0] for m in flatten_levels(ctr_maps, 1)],
        )

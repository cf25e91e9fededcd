"""The FCOS head: a classification tower and a box tower (conv3x3 + GroupNorm + ReLU) shared by
all levels (drdet.modeling.dense.head); class logits from the first, (l, t, r, b) distances and
centre-ness from the second."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdet.layers.winograd import WinogradConv2d
from drdet.modeling.dense import DenseHead, DenseOutputs, flatten_levels, init_dense_head


class FCOSHead(DenseHead):
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
        super().__init__(in_channels, num_classes, num_convs, use_gn, gn_groups, gn_eps)
        self.strides = [int(s) for s in strides]
        self.cls_logits = WinogradConv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = WinogradConv2d(in_channels, 4, kernel_size=3, padding=1)
        self.centerness = WinogradConv2d(in_channels, 1, kernel_size=3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        init_dense_head(self, self.cls_logits, prior_prob)

    def predictors(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return [self.cls_logits], [self.bbox_pred, self.centerness]

    def forward(self, features: list[Tensor]) -> DenseOutputs:
        """Predictions for FPN ``features`` (list of (B, in_channels, H_l, W_l), one per stride):
        per level, rows in (y, x) order (the locations' order), ``cls_logits`` (B, H_l * W_l,
        C), ``box_regression`` (B, H_l * W_l, 4) distances (l, t, r, b) >= 0 in pixels and
        ``centerness`` (B, H_l * W_l) logits."""
        if len(features) != len(self.strides):
            raise ValueError(
                f"FCOSHead: {len(features)} feature maps for {len(self.strides)} strides"
            )
        cls_maps, box_maps, ctr_maps = self.run(features)
        distances = [
            F.relu(self.scales[level] * m) * stride
            for level, (m, stride) in enumerate(zip(box_maps, self.strides))
        ]
        return DenseOutputs(
            flatten_levels(cls_maps, self.num_classes),
            flatten_levels(distances, 4),
            [m[..., 0] for m in flatten_levels(ctr_maps, 1)],
        )

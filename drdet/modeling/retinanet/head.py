"""The RetinaNet head: a classification and a box-regression tower shared by all levels
(drdet.modeling.dense.head), predicting per anchor C class logits and 4 box deltas."""

from __future__ import annotations

from torch import Tensor, nn

from drdet.layers.winograd import WinogradConv2d
from drdet.modeling.dense import DenseHead, DenseOutputs, flatten_levels, init_dense_head


class RetinaNetHead(DenseHead):
    """Two towers of ``num_convs`` conv3x3(+GroupNorm)+ReLU, then a conv3x3 predicting, per
    anchor, ``num_classes`` logits (sigmoid, no background column) and 4 box deltas. How the
    levels run (packed on one canvas, or as a list): drdet.modeling.dense.head.

    Convolutions are initialised from normal(0, 0.01) with zero bias, except the class logits'
    bias, which starts at -log((1 - p) / p) so that every score starts at ``prior_prob``.

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C (MODEL.NUM_CLASSES - 1).
        num_anchors: anchors per location A.
        prior_prob: the class scores' initial probability.
        tower: :class:`~drdet.modeling.dense.DenseHead`'s arguments (num_convs, use_gn, ...).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        prior_prob: float = 0.01,
        **tower,
    ):
        super().__init__(in_channels, num_classes, **tower)
        self.num_anchors = num_anchors
        self.cls_logits = WinogradConv2d(
            in_channels, num_anchors * num_classes, kernel_size=3, padding=1
        )
        self.bbox_pred = WinogradConv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        init_dense_head(self, self.cls_logits, prior_prob)

    def predictors(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return [self.cls_logits], [self.bbox_pred]

    def forward(self, features: list[Tensor]) -> DenseOutputs:
        """Predictions for FPN ``features`` (list of (B, in_channels, H_l, W_l)): per level
        ``cls_logits`` (B, H_l * W_l * A, C) and ``box_regression`` (B, H_l * W_l * A, 4)
        deltas, rows in (y, x, anchor) order, the order of the anchor generator's anchors."""
        cls_maps, box_maps = self.run(features)
        return DenseOutputs(flatten_levels(cls_maps, self.num_classes), flatten_levels(box_maps, 4))

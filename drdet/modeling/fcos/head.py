"""The FCOS head: a classification tower and a box tower (conv3x3 + GroupNorm + ReLU) shared by
all levels (drdet.modeling.dense.head); class logits from the first, (l, t, r, b) distances and
centre-ness from the second."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from drdet.modeling.dense import CenternessHead


class FCOSHead(CenternessHead):
    """Per location of every level: ``num_classes`` class logits (sigmoid, no background
    column), 4 distances (l, t, r, b) to the box sides in pixels, and a centre-ness logit.

    The distances are ``relu(scales[l] * x) * strides[l]`` for the box tower's raw output x at
    level l: x is in units of the level's stride (torchvision's normalised regression), and
    ``scales`` (learnt, one per level, initialised to 1) lets each level rescale it (the FCOS
    paper). The centre-ness branch sits on the box tower (torchvision and the FCOS authors'
    later code). Initialisation: :class:`~drdet.modeling.dense.CenternessHead`.

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C.
        strides: stride of each level, pixels (8, 16, 32, 64, 128 for P3-P7).
        others: as :class:`~drdet.modeling.dense.CenternessHead`'s.
    """

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int], **kwargs):
        super().__init__(in_channels, num_classes, len(strides), **kwargs)
        self.strides = [int(s) for s in strides]

    def box_outputs(self, scaled: list[Tensor]) -> list[Tensor]:
        """The distances in pixels: relu of the scaled maps times each level's stride."""
        return [F.relu(m) * stride for m, stride in zip(scaled, self.strides)]

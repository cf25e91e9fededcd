"""The ATSS head: a classification tower and a box tower (conv3x3 + GroupNorm + ReLU) shared by
all levels (drdet.modeling.dense.head); class logits from the first, box deltas against the
one anchor of each location and a centre-ness logit from the second."""

from __future__ import annotations

from drdet.modeling.dense import CenternessHead


class ATSSHead(CenternessHead):
    """Per location of every level (one anchor each): ``num_classes`` class logits, 4 box deltas
    (dx, dy, dw, dh) against its anchor and a centre-ness logit (the layout, the per-level
    scales of the deltas, as the ATSS authors' and mmdetection's head, and the initialisation:
    :class:`~drdet.modeling.dense.CenternessHead`).

    Args:
        in_channels: channels of the FPN features.
        num_classes: foreground classes C.
        num_levels: pyramid levels (5 for P3-P7), one scale each.
    """

"""The dense core's output: per-level predictions of a dense head, pure tensors."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class DenseOutputs(NamedTuple):
    """A dense head's predictions, per level l (A_l rows: H_l * W_l cells x anchors per cell, in
    (y, x, anchor) order, the order of the anchor generator's anchors):

    - ``cls_logits``: (B, A_l, C) float class logits (sigmoid, no background column);
    - ``box_regression``: (B, A_l, 4) float, what the detector's box coder decodes against the
      anchors (RetinaNet, ATSS: deltas; FCOS: (l, t, r, b) distances in pixels);
    - ``centerness``: (B, A_l) float centre-ness logits, or None for a head without them.
    """

    cls_logits: list[Tensor]
    box_regression: list[Tensor]
    centerness: list[Tensor] | None = None

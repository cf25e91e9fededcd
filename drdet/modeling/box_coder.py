"""Encoding of boxes as deltas relative to anchors (the R-CNN parametrisation)."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) relative to anchors and decodes them back.

    With anchor centre (xa, ya), size (wa, ha) and weights (wx, wy, ww, wh):
    dx = wx * (x - xa) / wa, dy = wy * (y - ya) / ha, dw = ww * log(w / wa), dh = wh * log(h / ha).
    Widths are x2 - x1 (no "+1"). Decoding clamps dw / ww and dh / wh at ``scale_clamp``
    (log(1000/16)) so that exp() cannot overflow.
    """

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder: `weights` must have 4 values, got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas (..., 4) of ``boxes`` (..., 4) x1y1x2y2 relative to ``anchors`` (..., 4).
        Both must have positive widths and heights."""
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        bw = boxes[..., 2] - boxes[..., 0]
        bh = boxes[..., 3] - boxes[..., 1]
        bx = boxes[..., 0] + 0.5 * bw
        by = boxes[..., 1] + 0.5 * bh
        return torch.stack(
            [
                wx * (bx - ax) / aw,
                wy * (by - ay) / ah,
                ww * torch.log(bw / aw),
                wh * torch.log(bh / ah),
            ],
            dim=-1,
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes (..., 4) x1y1x2y2 from ``deltas`` (..., 4) relative to ``anchors`` (..., 4).
        Computed in at least float32; returned in the deltas' dtype."""
        dtype = deltas.dtype
        compute = torch.promote_types(dtype, torch.float32)
        deltas = deltas.to(compute)
        anchors = anchors.to(compute)
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.scale_clamp)) * aw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.scale_clamp)) * ah
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        return boxes.to(dtype)

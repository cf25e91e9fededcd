"""Detectron's anchor enumeration, an independent reference for drdet's anchor generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def detectron_cell_anchors_inclusive(
    stride: int, sizes: Sequence[float], ratios: Sequence[float]
) -> torch.Tensor:
    """Detectron's anchor enumeration written out for the tests, in its own inclusive corners:
    a (stride x stride) reference box at (0, 0, stride - 1, stride - 1); per ratio, a box of the
    same area with width round(sqrt(area / ratio)) and height round(width * ratio); each scaled
    by size / stride about the reference centre. Returns (len(ratios) * len(sizes), 4) float64
    boxes (x1, y1, x2, y2) in pixels, ratio-major."""
    centre = (stride - 1) / 2.0
    rows = []
    for r in ratios:
        w0 = np.round(np.sqrt(stride * stride / r))
        h0 = np.round(w0 * r)
        for size in sizes:
            w, h = w0 * size / stride, h0 * size / stride
            rows.append(
                [
                    centre - (w - 1) / 2,
                    centre - (h - 1) / 2,
                    centre + (w - 1) / 2,
                    centre + (h - 1) / 2,
                ]
            )
    return torch.tensor(rows, dtype=torch.float64)

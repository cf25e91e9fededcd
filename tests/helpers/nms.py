"""Random NMS inputs: boxes, and scores free of ties (with ties, the visiting order of equal
scores, and so the result, is implementation-defined)."""

from __future__ import annotations

import torch


def random_boxes(
    n: int,
    image_size: float = 800.0,
    max_size: float = 200.0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> torch.Tensor:
    """(n, 4) boxes (x1, y1, x2, y2) in pixels inside a square image, sides in [0, max_size)."""
    xy = torch.rand(n, 2) * image_size
    wh = torch.rand(n, 2) * max_size
    return torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype)


def distinct_scores(n: int, device: str = "cpu") -> torch.Tensor:
    """(n,) float32 scores in (0, 1], all different (exactly representable)."""
    return ((torch.randperm(n) + 1).float() / n).to(device)

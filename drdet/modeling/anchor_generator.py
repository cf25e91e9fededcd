"""Anchors for every location of every FPN level.

Convention (the same as torchvision's ``AnchorGenerator``, without its rounding): the anchors of
feature cell (i, j) of a level with stride s are centred on the image point (x, y) = (s*j, s*i);
an anchor of area size**2 and aspect ratio r = height / width has width size / sqrt(r) and height
size * sqrt(r). Within a cell the anchors are ordered ratio-major, scale-minor
(ratio 0 scale 0, ratio 0 scale 1, ...), and the cells row-major, so level l gives
(H_l * W_l * A, 4) anchors in the order of the head's outputs.
(maskrcnn-benchmark centres its anchors on s*j + (s-1)/2 with "+1" widths; the difference is a
constant shift smaller than one stride that training absorbs.)
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The (len(ratios) * len(sizes), 4) float64 anchors of one cell, centred on (0, 0)."""
    sizes_t = torch.as_tensor(sizes, dtype=torch.float64)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64)
    if (sizes_t <= 0).any() or (ratios <= 0).any():
        raise ValueError(
            f"anchor sizes {list(sizes)} and aspect ratios {list(aspect_ratios)} must be > 0"
        )
    heights = (ratios.sqrt()[:, None] * sizes_t[None, :]).reshape(-1)
    widths = ((1.0 / ratios.sqrt())[:, None] * sizes_t[None, :]).reshape(-1)
    return torch.stack([-widths, -heights, widths, heights], dim=1) / 2


class AnchorGenerator(nn.Module):
    """Anchors of each FPN level, cached per feature size, device and dtype.

    Args:
        sizes: per level, the anchor sizes (sqrt of area, pixels) of that level.
        aspect_ratios: height / width ratios, shared by all levels.
        strides: per level, the stride of the feature map in pixels.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} levels of sizes but {len(strides)} strides"
            )
        self.strides = [int(s) for s in strides]
        self._cell_anchors = [cell_anchors(s, aspect_ratios) for s in sizes]
        self._cache: Dict[Tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return self._cell_anchors[0].shape[0]

    def grid_anchors(
        self, level: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """(height * width * A, 4) anchors of ``level`` for a feature map of height x width."""
        key = (level, height, width, str(device), dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            stride = self.strides[level]
            ys = torch.arange(height, dtype=torch.float64) * stride
            xs = torch.arange(width, dtype=torch.float64) * stride
            ys, xs = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
            anchors = (
                (shifts + self._cell_anchors[level][None])
                .reshape(-1, 4)
                .to(device=device, dtype=dtype)
            )
            self._cache[key] = anchors
        return anchors

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """Anchors for feature maps ``features`` (list of (B, C, H_l, W_l)), one (H_l*W_l*A, 4)
        tensor per level, in the features' device and float32 (the same for every image)."""
        if len(features) != len(self.strides):
            raise ValueError(
                f"AnchorGenerator: got {len(features)} feature maps, expected {len(self.strides)}"
            )
        return [
            self.grid_anchors(level, f.shape[-2], f.shape[-1], f.device, torch.float32)
            for level, f in enumerate(features)
        ]


def build_anchor_generator(cfg) -> AnchorGenerator:
    """AnchorGenerator from cfg.MODEL.RETINANET: level l gets sizes
    ANCHOR_SIZES[l] * OCTAVE**(k / SCALES_PER_OCTAVE)
    for k = 0 .. SCALES_PER_OCTAVE-1 (32, 40.3, 50.8 for P3 by default)."""
    rcfg = cfg.MODEL.RETINANET
    scales = [rcfg.OCTAVE ** (k / rcfg.SCALES_PER_OCTAVE) for k in range(rcfg.SCALES_PER_OCTAVE)]
    sizes = [[size * s for s in scales] for size in rcfg.ANCHOR_SIZES]
    return AnchorGenerator(sizes, rcfg.ASPECT_RATIOS, rcfg.ANCHOR_STRIDES)

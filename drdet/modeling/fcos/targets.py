"""FCOS's target assignment: which box (if any) each location of each level regresses.

A location (x, y) of level l, whose size is s_l (its stride: 8 ... 128), is a positive of box
(x1, y1, x2, y2) when
- it lies strictly inside the box: l = x - x1, t = y - y1, r = x2 - x, b = y2 - y all > 0 (a
  location on the border is not inside);
- with centre sampling (radius r > 0), it also lies strictly within r * s_l of the box centre in
  x and in y (|x - cx| < r * s_l and |y - cy| < r * s_l);
- the box's size at that location, m = max(l, t, r, b), lies in the level's range
  [lo_l, hi_l] (bounds included, the FCOS paper's rule; torchvision excludes both bounds);
  lo = 0 for P3 and hi = infinity for P7.
A location that several boxes claim takes the box of smallest area; equal areas go to the box
listed first. Every other location is background: FCOS ignores no location (the loss's
``ignore_outside_center`` can leave out those inside a box but outside its centre region).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from drdet.structures.boxes import box_area


def level_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> list[tuple[float, float]]:
    """The (lo, hi) range of max(l, t, r, b) of each level, pixels: 4 bounds (64, 128, 256, 512)
    give (0, 64), (64, 128), (128, 256), (256, 512), (512, inf)."""
    if len(sizes_of_interest) != num_levels - 1:
        raise ValueError(
            f"{num_levels} levels need {num_levels - 1} sizes of interest, "
            f"got {list(sizes_of_interest)}"
        )
    bounds = [0.0, *[float(s) for s in sizes_of_interest], math.inf]
    return list(zip(bounds[:-1], bounds[1:]))


def location_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """(l, t, r, b) distances from each location to the sides of each box.

    Args:
        points: (L, 2) float (x, y) pixels.
        boxes: (..., M, 4) float x1y1x2y2 pixels.
    Returns:
        (..., L, M, 4) float: x - x1, y - y1, x2 - x, y2 - y.
    """
    x = points[:, 0, None]
    y = points[:, 1, None]
    x1, y1, x2, y2 = (c[..., None, :] for c in boxes.unbind(-1))
    return torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)


def assign_locations(
    points: Tensor,
    point_sizes: Tensor,
    point_ranges: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    center_sampling_radius: float = 0.0,
) -> Tensor:
    """The box each location regresses (see the module docstring), for a batch of images.

    Args:
        points: (L, 2) float (x, y) pixels, all levels concatenated.
        point_sizes: (L,) float size (stride) of each location's level, pixels.
        point_ranges: (L, 2) float (lo, hi) range of max(l, t, r, b) of its level, pixels.
        gt_boxes: (B, M, 4) float x1y1x2y2 pixels (padding rows allowed).
        gt_valid: (B, M) bool, False for padding rows.
        center_sampling_radius: in units of the level's size; 0 = no centre sampling.
    Returns:
        (B, L) int64: the index in 0..M-1 of the box, or -1 for background.
    """
    num_images, num_boxes = gt_valid.shape
    if num_boxes == 0:
        return torch.full(
            (num_images, points.shape[0]), -1, dtype=torch.int64, device=points.device
        )
    dist = location_distances(points, gt_boxes)  # (B, L, M, 4)
    ok = dist.amin(dim=-1) > 0
    if center_sampling_radius > 0:
        centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
        offset = (points[None, :, None, :] - centres[:, None, :, :]).abs().amax(dim=-1)
        ok &= offset < center_sampling_radius * point_sizes[None, :, None]
    size = dist.amax(dim=-1)
    ok &= (size >= point_ranges[None, :, 0:1]) & (size <= point_ranges[None, :, 1:2])
    ok &= gt_valid[:, None, :]
    areas = box_area(gt_boxes)[:, None, :].expand_as(ok)
    areas = torch.where(ok, areas, torch.full_like(areas, math.inf))
    smallest, matches = areas.min(dim=-1)  # min() returns the first index among equal values
    return matches.masked_fill(~torch.isfinite(smallest), -1)

"""FCOS's locations and their box coding: a location is the centre of one square anchor per
cell of side the level's stride (torchvision's construction), and a box is coded as its
(l, t, r, b) distances from the location."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from drdet.modeling.anchor_generator import AnchorGenerator


def location_generator(strides: Sequence[int], convention: str = "exact") -> AnchorGenerator:
    """One anchor of side s per cell of each level of stride s, centred on its location: with
    ``convention`` "exact" location (i, j) is (s*j, s*i); "torchvision" takes s per axis as
    (padded image size) // (feature size), as torchvision does (it differs from s on P6/P7
    when the padded size is not a multiple of 128); "maskrcnn_benchmark" gives (s*j + s/2,
    s*i + s/2), the FCOS authors' locations (their code: s*j + s//2; the strides are even)."""
    return AnchorGenerator([[float(s)] for s in strides], [1.0], strides, convention)


def anchor_centres(anchors: Tensor) -> Tensor:
    """(N, 2) float (x, y) centres of (N, 4) x1y1x2y2 anchors: FCOS's locations."""
    return (anchors[:, :2] + anchors[:, 2:]) / 2


class DistanceCoder:
    """Boxes as (l, t, r, b) distances from the locations, the centres of the anchors; the
    interface of drdet.modeling.box_coder.BoxCoder."""

    @staticmethod
    def decode(distances: Tensor, anchors: Tensor) -> Tensor:
        """distances (N, 4) pixels, anchors (N, 4) -> boxes (N, 4) x1y1x2y2 pixels."""
        points = anchor_centres(anchors)
        return torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)

    @staticmethod
    def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
        """boxes (N, 4) x1y1x2y2 pixels, anchors (N, 4) -> (N, 4) distances (l, t, r, b)."""
        points = anchor_centres(anchors)
        return torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1)

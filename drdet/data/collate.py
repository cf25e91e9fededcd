"""Batch collation: images of different sizes stay a list (padding is the detector's job)."""
from __future__ import annotations

from typing import Any

import torch


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, Any], int]]
                      ) -> tuple[list[torch.Tensor], list[dict[str, Any]], list[int]]:
    """[(image, target, index), ...] -> (images, targets, indices), three lists of equal length.

    images: B tensors (3, H_i, W_i) float; targets: B dicts (see COCODataset); indices: B ints,
    positions in the dataset the loader iterates.
    """
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    images, targets, indices = zip(*batch)
    return list(images), list(targets), list(indices)

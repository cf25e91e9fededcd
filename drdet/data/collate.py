"""Batch collation: images of different sizes stay a list (padding is the detector's job)."""

from __future__ import annotations

from typing import Any

import torch


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any], int]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]], list[int]]:
    """[(image, target, index), ...] -> (images, targets, indices), three lists of equal length.

    images: B tensors (3, H_i, W_i) float; targets: B dicts (see COCODataset); indices: B ints,
    positions in the dataset the loader iterates.
    """
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    images, targets, indices = zip(*(item[:3] for item in batch))
    return list(images), list(targets), list(indices)


def collate_with_bad_images(batch: list[tuple]) -> tuple[list, list, list, list, bool]:
    """Items of datasets with a read policy (see drdet.data.bad_images), (image, target, index,
    bad image records) or plain 3-tuples -> (images, targets, indices, records, complete):
    the first three as collate_detection's, `records` the BadImage records of the whole batch,
    `complete` False when some item could not be replaced (its image is None)."""
    images, targets, indices = collate_detection(batch)
    records = [rec for item in batch if len(item) > 3 for rec in item[3]]
    return images, targets, indices, records, all(image is not None for image in images)

"""Batching images of different sizes into one padded tensor."""

import math
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor


class ImageList(NamedTuple):
    """A batch of images padded to a common size.

    Attributes:
        tensors: (B, C, H, W) the images, zero-padded at the bottom and right.
        image_sizes: B pairs (height, width) of each image before padding, in pixels.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def to_image_list(
    images: Sequence[Tensor], size_divisibility: int = 0, pad_value: float = 0.0
) -> ImageList:
    """Pads a list of (C, H_i, W_i) images to (B, C, H, W) with H, W the largest sizes rounded up
    to a multiple of ``size_divisibility`` (0 or 1: no rounding)."""
    if len(images) == 0:
        raise ValueError("to_image_list: `images` is empty")
    for i, img in enumerate(images):
        if img.dim() != 3:
            raise ValueError(
                f"to_image_list: image {i} has shape {tuple(img.shape)}, expected (C, H, W)"
            )
        if img.shape[0] != images[0].shape[0]:
            raise ValueError(
                f"to_image_list: image {i} has {img.shape[0]} channels, "
                f"image 0 has {images[0].shape[0]}"
            )
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    if size_divisibility > 1:
        height = int(math.ceil(height / size_divisibility) * size_divisibility)
        width = int(math.ceil(width / size_divisibility) * size_divisibility)
    first = images[0]
    batch = first.new_full((len(images), first.shape[0], height, width), pad_value)
    for img, slot in zip(images, batch):
        slot[:, : img.shape[1], : img.shape[2]].copy_(img)
    return ImageList(batch, [(int(img.shape[1]), int(img.shape[2])) for img in images])

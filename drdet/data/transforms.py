"""Training and test transforms on (PIL image, target dict) pairs.

A target is a dict with at least "boxes": (K, 4) float32 x1y1x2y2 in the current image's pixels
(continuous coordinates, width = x2 - x1) and "size": (h, w) of the current image. The transforms
keep the two consistent. The last transform, ToTensor, turns the PIL image into the (3, H, W)
float tensor the detector takes (normalisation by PIXEL_MEAN/STD and padding to
SIZE_DIVISIBILITY are the detector's job).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

Target = dict[str, Any]


class Compose:
    """Apply transforms in order; each maps (image, target) -> (image, target)."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, target: Target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


def resized_hw(height: int, width: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """Output (h, w) of maskrcnn-benchmark's resize rule.

    The shorter side becomes `min_size`, unless the longer side would then exceed `max_size`, in
    which case the shorter side is reduced to round(max_size * short / long). The longer side is
    int(size * long / short) (truncated). An image whose shorter side already equals the target is
    returned unchanged.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    short, long = (height, width) if height <= width else (width, height)
    size = min_size
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class Resize:
    """Resize so the shorter side is one of `min_sizes` (picked at random) and the longer side at
    most `max_size`; boxes are scaled by the same per-axis factors.

    Args:
        min_sizes: candidate shorter-side lengths in pixels (INPUT.MIN_SIZE_TRAIN / _TEST).
        max_size: cap on the longer side in pixels (INPUT.MAX_SIZE_TRAIN / _TEST); None: no cap.
        generator: torch RNG for the choice of size (default: torch's global RNG, which the
            DataLoader seeds per worker).
    """

    def __init__(
        self,
        min_sizes: int | Sequence[int],
        max_size: int | None,
        generator: torch.Generator | None = None,
    ):
        if isinstance(min_sizes, int):
            min_sizes = (min_sizes,)
        self.min_sizes = tuple(int(s) for s in min_sizes)
        if not self.min_sizes or min(self.min_sizes) <= 0:
            raise ValueError(
                f"min_sizes must be a non-empty list of positive ints, got {min_sizes}"
            )
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive or None, got {max_size}")
        self.max_size = max_size
        self.generator = generator

    def __call__(self, image: Image.Image, target: Target):
        if len(self.min_sizes) == 1:
            size = self.min_sizes[0]
        else:
            pick = int(torch.randint(len(self.min_sizes), (1,), generator=self.generator))
            size = self.min_sizes[pick]
        w, h = image.size
        oh, ow = resized_hw(h, w, size, self.max_size)
        if (oh, ow) != (h, w):
            image = image.resize((ow, oh), Image.Resampling.BILINEAR)
        target = dict(target)
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float32)
        boxes = target["boxes"] * scale
        # float32 rounding can push a border box a hair past the edge: keep it inside.
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
        target["boxes"] = boxes
        target["size"] = (oh, ow)
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_sizes={self.min_sizes}, max_size={self.max_size})"


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror (K, 4) x1y1x2y2 boxes in an image `width` pixels wide: x1' = w - x2, x2' = w - x1."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class RandomHorizontalFlip:
    """Flip image and boxes left-right with probability `prob`."""

    def __init__(self, prob: float = 0.5, generator: torch.Generator | None = None):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip prob must be in [0, 1], got {prob}")
        self.prob = prob
        self.generator = generator

    def __call__(self, image: Image.Image, target: Target):
        if self.prob > 0 and torch.rand((), generator=self.generator).item() < self.prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            target = dict(target)
            target["boxes"] = hflip_boxes(target["boxes"], image.size[0])
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


class ToTensor:
    """PIL RGB image -> (3, H, W) float32 tensor in the network's input format.

    to_bgr255=True: BGR channel order, values 0-255 (Caffe2/MSRA weights, INPUT.TO_BGR255);
    False: RGB, values 0-1 (torchvision weights).
    """

    def __init__(self, to_bgr255: bool = True):
        self.to_bgr255 = to_bgr255

    def __call__(self, image: Image.Image, target: Target):
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"ToTensor expects an RGB image, got array of shape {array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
        if self.to_bgr255:
            tensor = tensor.flip(0)
        else:
            tensor = tensor / 255.0
        return tensor, target

    def __repr__(self) -> str:
        return f"ToTensor(to_bgr255={self.to_bgr255})"


def build_transforms(cfg, is_train: bool) -> Compose:
    """The transform pipeline of INPUT.* (maskrcnn-benchmark semantics).

    Train: Resize(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN), flip with HORIZONTAL_FLIP_PROB_TRAIN, ToTensor.
    Test: Resize(MIN_SIZE_TEST, MAX_SIZE_TEST), ToTensor. INPUT.TO_BGR255 picks the tensor format.
    """
    inp = cfg.INPUT
    if is_train:
        resize = Resize(tuple(inp.MIN_SIZE_TRAIN), inp.MAX_SIZE_TRAIN)
        steps: list[Callable] = [
            resize,
            RandomHorizontalFlip(inp.get("HORIZONTAL_FLIP_PROB_TRAIN", 0.5)),
        ]
    else:
        min_test = inp.MIN_SIZE_TEST
        steps = [
            Resize(min_test if isinstance(min_test, int) else tuple(min_test), inp.MAX_SIZE_TEST)
        ]
    steps.append(ToTensor(to_bgr255=inp.TO_BGR255))
    return Compose(steps)

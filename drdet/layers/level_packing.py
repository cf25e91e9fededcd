"""The maps of several FPN levels packed into one canvas, so that a layer shared by the levels
(the RetinaNet head's convolutions) runs in one call instead of one call per level.

Each image's levels are placed side by side on a zero canvas, separated by at least one row or
column of zeros: a 3x3 convolution with padding 1 then sees, around every pixel of a level,
exactly the neighbours it sees on that level alone (the level's own pixels, or zeros where the
level's padding would be), so the canvas output restricted to a level equals the per-level
output. The gaps are not zero after a convolution (bias, and the borders bleed into them), so
they are set back to zero before the next one (:meth:`PackedLevels.mask`). GroupNorm runs on
each level's view of the canvas (:func:`packed_group_norm`), so its statistics stay per level
and per image.

Placement: levels in the order given (largest first for an FPN) fill columns whose height is that
of the tallest level; a level that no longer fits below the previous one starts a new column.
For P3-P7 of an 800 x 1344 image (100 x 168 down to 7 x 11) this is P3 beside a column of P4-P7,
a 100 x 253 canvas, 13% larger than the levels' 22,400 pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LevelLayout",
    "PackedLevels",
    "apply_packed",
    "packable",
    "packed_group_norm",
    "plan_layout",
]


@dataclass(frozen=True)
class LevelLayout:
    """Where each level lies on the canvas: ``sizes[l] = (H_l, W_l)`` at rows
    ``offsets[l][0]:+H_l`` and columns ``offsets[l][1]:+W_l`` of a ``canvas = (H, W)`` map."""

    sizes: tuple[tuple[int, int], ...]
    offsets: tuple[tuple[int, int], ...]
    canvas: tuple[int, int]


@functools.lru_cache(maxsize=64)
def plan_layout(sizes: tuple[tuple[int, int], ...]) -> LevelLayout:
    """The layout of levels of the given (H_l, W_l), in columns separated by one zero column,
    levels in a column separated by one zero row (see the module docstring)."""
    if not sizes:
        raise ValueError("plan_layout: no levels")
    height = max(h for h, _ in sizes)
    offsets = []
    x0, y, col_width = 0, 0, 0
    for h, w in sizes:
        if y > 0 and y + h > height:  # a new column
            x0, y, col_width = x0 + col_width + 1, 0, 0
        offsets.append((y, x0))
        y += h + 1
        col_width = max(col_width, w)
    return LevelLayout(tuple(sizes), tuple(offsets), (height, x0 + col_width))


@functools.lru_cache(maxsize=64)
def _mask(layout: LevelLayout, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, 1, H, W) 0/1 mask of the levels' pixels, made once per layout, device and dtype."""
    mask = torch.zeros(1, 1, *layout.canvas, dtype=dtype)
    for (h, w), (r, c) in zip(layout.sizes, layout.offsets):
        mask[..., r : r + h, c : c + w] = 1
    return mask.to(device)


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a channels_last (and not also contiguous) map, else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class PackedLevels:
    """Maps of several levels on one canvas. ``pack`` builds it from (B, C, H_l, W_l) maps;
    ``unpack`` returns the per-level views of a canvas of any channel count."""

    def __init__(self, layout: LevelLayout):
        self.layout = layout

    @classmethod
    def pack(cls, maps: Sequence[Tensor]) -> tuple[PackedLevels, Tensor]:
        """(PackedLevels, canvas (B, C, H, W)) for maps (B, C, H_l, W_l) of one batch size,
        channel count, dtype and device; the canvas keeps the first map's memory format
        (channels_last or contiguous) and is zero outside the levels."""
        first = maps[0]
        layout = plan_layout(tuple((int(m.shape[2]), int(m.shape[3])) for m in maps))
        canvas = first.new_zeros((*first.shape[:2], *layout.canvas)).contiguous(
            memory_format=_memory_format(first)
        )
        for m, (h, w), (r, c) in zip(maps, layout.sizes, layout.offsets):
            canvas[:, :, r : r + h, c : c + w] = m
        return cls(layout), canvas

    def unpack(self, canvas: Tensor) -> list[Tensor]:
        """Per level the (B, K, H_l, W_l) view of a (B, K, H, W) canvas."""
        return [
            canvas[:, :, r : r + h, c : c + w]
            for (h, w), (r, c) in zip(self.layout.sizes, self.layout.offsets)
        ]

    def mask(self, canvas: Tensor) -> Tensor:
        """The canvas with its gaps set to zero (levels unchanged)."""
        return canvas * _mask(self.layout, canvas.device, canvas.dtype)


def packed_group_norm(canvas: Tensor, packed: PackedLevels, norm: nn.GroupNorm) -> Tensor:
    """``norm`` applied to each level of each image of the canvas separately, exactly as on the
    level alone: ``F.group_norm`` on each level's view (statistics per image, group and level),
    written into a zero canvas, so the gaps of the result are zero. One call per level: the
    convolutions, which cost the time, are the ones packed. (Statistics by matrix products with
    a one-hot map of the levels, one call for all, made the demo head's CPU training step 2.4x
    slower; docs/BENCHMARKS.md.)

    Args: canvas (B, C, H, W), C divisible by ``norm.num_groups``. Returns (B, C, H, W) in the
    dtype ``norm`` returns (float32 under autocast).
    """
    levels = [norm(level) for level in packed.unpack(canvas)]
    out = levels[0].new_zeros(canvas.shape).contiguous(memory_format=_memory_format(canvas))
    for level, (h, w), (r, c) in zip(levels, packed.layout.sizes, packed.layout.offsets):
        out[:, :, r : r + h, c : c + w] = level  # a fresh view each time (autograd's CopySlices)
    return out


def _same_size_conv(module: nn.Module) -> bool:
    """A zero-padded, stride-1, dilation-1 convolution with an odd kernel <= 3 and "same"
    padding (the output pixel sees at most one pixel around it). A wrapper holding such a
    convolution as ``.conv`` (drdet.layers.packed_conv.PackedConv2d) counts too."""
    conv = getattr(module, "conv", module)
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size in ((1, 1), (3, 3))
        and conv.padding == tuple(k // 2 for k in conv.kernel_size)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
    )


_POINTWISE = (nn.ReLU, nn.Identity)  # zero in, zero out


def packable(layers: Iterable[nn.Module]) -> bool:
    """Whether :func:`apply_packed` computes these layers exactly: same-size convolutions,
    GroupNorm, ReLU and Identity only."""
    return all(isinstance(m, (nn.GroupNorm, *_POINTWISE)) or _same_size_conv(m) for m in layers)


def apply_packed(layers: Iterable[nn.Module], canvas: Tensor, packed: PackedLevels) -> Tensor:
    """The layers (see :func:`packable`) run on the canvas, one call each, with the gaps kept at
    zero: a convolution's output is masked unless a GroupNorm (which masks) follows it."""
    layers = list(layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.GroupNorm):
            canvas = packed_group_norm(canvas, packed, layer)
        elif isinstance(layer, _POINTWISE):
            canvas = layer(canvas)
        else:
            canvas = layer(canvas)
            if not (i + 1 < len(layers) and isinstance(layers[i + 1], nn.GroupNorm)):
                canvas = packed.mask(canvas)
    return canvas

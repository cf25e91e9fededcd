"""The maps of several FPN levels packed into one canvas, so that a layer shared by the levels
(the RetinaNet head's convolutions) runs in one call instead of one call per level.

Each image's levels are placed side by side on a zero canvas, separated by at least one row or
column of zeros: a 3x3 convolution with padding 1 then sees, around every pixel of a level,
exactly the neighbours it sees on that level alone (the level's own pixels, or zeros where the
level's padding would be), so the canvas output restricted to a level equals the per-level
output. The gaps are not zero after a convolution (bias, and the borders bleed into them), so
they are set back to zero before the next one (:meth:`PackedLevels.mask`). GroupNorm is made
per level and per image by computing its statistics over each level's pixels only
(:func:`packed_group_norm`).

Placement: levels in the order given (largest first for an FPN) fill columns whose height is that
of the tallest level; a level that no longer fits below the previous one starts a new column.
For P3-P7 of an 800 x 1344 image (100 x 168 down to 7 x 11) this is P3 beside a column of P4-P7,
a 100 x 253 canvas, 13% larger than the levels' 22,400 pixels.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LevelLayout", "PackedLevels", "apply_packed", "packable", "packed_group_norm", "plan_layout",
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
def _masks(layout: LevelLayout, device: torch.device, dtype: torch.dtype
           ) -> tuple[Tensor, Tensor, Tensor]:
    """(1, 1, H, W) 0/1 mask of the levels' pixels, (L, H * W) one-hot of each level's pixels
    and (L,) pixels per level, made once per layout, device and dtype."""
    height, width = layout.canvas
    onehot = torch.zeros(len(layout.sizes), height, width, dtype=dtype)
    for level, ((h, w), (r, c)) in enumerate(zip(layout.sizes, layout.offsets)):
        onehot[level, r:r + h, c:c + w] = 1
    counts = torch.tensor([h * w for h, w in layout.sizes], dtype=dtype)
    mask = onehot.sum(0)[None, None]
    return (mask.to(device), onehot.view(len(layout.sizes), -1).to(device), counts.to(device))


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
        fmt = (torch.channels_last
               if first.is_contiguous(memory_format=torch.channels_last)
               and not first.is_contiguous() else torch.contiguous_format)
        canvas = first.new_zeros((*first.shape[:2], *layout.canvas)).contiguous(memory_format=fmt)
        for m, (h, w), (r, c) in zip(maps, layout.sizes, layout.offsets):
            canvas[:, :, r:r + h, c:c + w] = m
        return cls(layout), canvas

    def unpack(self, canvas: Tensor) -> list[Tensor]:
        """Per level the (B, K, H_l, W_l) view of a (B, K, H, W) canvas."""
        return [canvas[:, :, r:r + h, c:c + w]
                for (h, w), (r, c) in zip(self.layout.sizes, self.layout.offsets)]

    def mask(self, canvas: Tensor) -> Tensor:
        """The canvas with its gaps set to zero (levels unchanged)."""
        return canvas * _masks(self.layout, canvas.device, canvas.dtype)[0]


def packed_group_norm(canvas: Tensor, packed: PackedLevels, norm: nn.GroupNorm) -> Tensor:
    """``norm`` applied to each level of each image of the canvas separately, as on the level
    alone: mean and variance per (image, group, level) over that level's pixels only. The gaps
    of the result are zero. Computed in float32 (float64 for float64 input) outside autocast, as
    autocast runs ``group_norm`` in float32.

    Args: canvas (B, C, H, W), C divisible by ``norm.num_groups``. Returns (B, C, H, W).
    """
    b, c, h, w = canvas.shape
    groups = norm.num_groups
    dtype = torch.promote_types(canvas.dtype, torch.float32)
    with torch.autocast(canvas.device.type, enabled=False):
        mask, onehot, counts = _masks(packed.layout, canvas.device, dtype)
        counts = counts * (c // groups)
        x = canvas.to(dtype).reshape(b, groups, c // groups, h * w)
        mean = (x.sum(2) @ onehot.T) / counts  # (B, G, L)
        centred = x - (mean @ onehot).unsqueeze(2)
        var = ((centred * centred).sum(2) @ onehot.T) / counts
        rstd = (torch.rsqrt(var + norm.eps) @ onehot).unsqueeze(2)  # 0 in the gaps
        y = (centred * rstd).reshape(b, c, h, w)
        if norm.affine:
            y = (y * norm.weight.to(dtype)[:, None, None]
                 + norm.bias.to(dtype)[:, None, None]) * mask
    return y


def _same_size_conv(module: nn.Module) -> bool:
    """A zero-padded, stride-1, dilation-1 convolution with an odd kernel <= 3 and "same"
    padding (the output pixel sees at most one pixel around it). A wrapper holding such a
    convolution as ``.conv`` (drdet.layers.packed_conv.PackedConv2d) counts too."""
    conv = getattr(module, "conv", module)
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size in ((1, 1), (3, 3))
            and conv.padding == tuple(k // 2 for k in conv.kernel_size)
            and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros")


_POINTWISE = (nn.ReLU, nn.Identity)  # zero in, zero out


def packable(layers: Sequence[nn.Module]) -> bool:
    """Whether :func:`apply_packed` computes these layers exactly: same-size convolutions,
    GroupNorm, ReLU and Identity only."""
    return all(isinstance(m, (nn.GroupNorm, *_POINTWISE)) or _same_size_conv(m) for m in layers)


def apply_packed(layers: Sequence[nn.Module], canvas: Tensor, packed: PackedLevels) -> Tensor:
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

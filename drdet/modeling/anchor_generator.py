"""Anchors for every location of every FPN level.

Convention ("exact", drdet's default): the anchors of feature cell (i, j) of a level with stride s
are centred on the image point (x, y) = (s*j, s*i); an anchor of area size**2 and aspect ratio
r = height / width has width size / sqrt(r) and height size * sqrt(r). Within a cell the anchors
are ordered ratio-major, scale-minor (ratio 0 scale 0, ratio 0 scale 1, ...), and the cells
row-major, so level l gives (H_l * W_l * A, 4) anchors in the order of the head's outputs.

Two other conventions reproduce the anchors of models trained elsewhere, exactly (see
``ANCHOR_CONVENTIONS``); boxes are always x1y1x2y2 with width x2 - x1 (no "+1"):

- "torchvision" (``retinanet_resnet50_fpn``): octave sizes truncated to integers (32, 40, 50),
  cell anchors computed in float32 with their corners rounded to integers, and the stride of a
  level taken as (padded image size) // (feature map size) per axis, as torchvision does: 96
  rather than 128 for a 2-cell-wide P7 of a 192-px-wide batch.
- "maskrcnn_benchmark" (Detectron's ``generate_anchors``; the authors' released Dr. Retina
  models): for stride s, ratio r and size z, the width is round(sqrt(s*s / r)) * z / s and the
  height round(that rounded width * r) * z / s (rounding half to even, at the stride), and the
  cell anchors are centred on (s*j + s/2, s*i + s/2). maskrcnn-benchmark writes the same boxes
  with inclusive corners (x2 one less, widths "+1"): its "+1" box coding, clipping and NMS on
  those equal drdet's exclusive-corner ones on these, so only the anchors need converting.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_config_check
from drdet.utils.checks import require

ANCHOR_CONVENTIONS = ("exact", "torchvision", "maskrcnn_benchmark")

_ANCHOR_GENERATOR = CN()
# Where the anchors (and FCOS's locations, the centres of one anchor per cell) lie, and how they
# are sized: "exact" (drdet's: centred on s*j), or the conventions of models converted from
# elsewhere, "torchvision" or "maskrcnn_benchmark" (see the module docstring).
_ANCHOR_GENERATOR.CONVENTION = "exact"
add_config_node("MODEL.ANCHOR_GENERATOR", _ANCHOR_GENERATOR)


def check_anchor_generator_cfg(cfg) -> None:
    convention = cfg.MODEL.ANCHOR_GENERATOR.CONVENTION
    require(
        convention in ANCHOR_CONVENTIONS,
        "MODEL.ANCHOR_GENERATOR.CONVENTION",
        convention,
        f"must be one of {list(ANCHOR_CONVENTIONS)}",
    )


register_config_check("MODEL.ANCHOR_GENERATOR", check_anchor_generator_cfg)


def cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float64
) -> Tensor:
    """The (len(ratios) * len(sizes), 4) anchors of one cell, centred on (0, 0), in ``dtype``."""
    sizes_t, ratios = _check_sizes_and_ratios(sizes, aspect_ratios, dtype)
    heights = (ratios.sqrt()[:, None] * sizes_t[None, :]).reshape(-1)
    widths = ((1.0 / ratios.sqrt())[:, None] * sizes_t[None, :]).reshape(-1)
    return torch.stack([-widths, -heights, widths, heights], dim=1) / 2


def torchvision_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """torchvision's cell anchors: the exact ones computed in float32, corners rounded."""
    return cell_anchors(sizes, aspect_ratios, torch.float32).round().double()


def maskrcnn_benchmark_cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int
) -> Tensor:
    """maskrcnn-benchmark's cell anchors for a level of stride ``stride``, in exclusive corners:
    sides rounded at the stride then scaled, centred on (stride / 2, stride / 2)."""
    sizes_t, ratios = _check_sizes_and_ratios(sizes, aspect_ratios)
    base_widths = torch.round(torch.sqrt(stride * stride / ratios))
    base_heights = torch.round(base_widths * ratios)
    scales = sizes_t / stride
    widths = (base_widths[:, None] * scales[None, :]).reshape(-1)
    heights = (base_heights[:, None] * scales[None, :]).reshape(-1)
    centred = torch.stack([-widths, -heights, widths, heights], dim=1) / 2
    return centred + stride / 2


def _check_sizes_and_ratios(
    sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    sizes_t = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    if (sizes_t <= 0).any() or (ratios <= 0).any():
        raise ValueError(
            f"anchor sizes {list(sizes)} and aspect ratios {list(aspect_ratios)} must be > 0"
        )
    return sizes_t, ratios


class AnchorGenerator(nn.Module):
    """Anchors of each FPN level, cached per feature size, device and dtype.

    Args:
        sizes: per level, the anchor sizes (sqrt of area, pixels) of that level.
        aspect_ratios: height / width ratios, shared by all levels.
        strides: per level, the stride of the feature map in pixels.
        convention: one of ``ANCHOR_CONVENTIONS`` (see the module docstring).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
        convention: str = "exact",
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} levels of sizes but {len(strides)} strides"
            )
        if convention not in ANCHOR_CONVENTIONS:
            raise ValueError(
                f"AnchorGenerator: convention {convention!r} is not one of {ANCHOR_CONVENTIONS}"
            )
        self.strides = [int(s) for s in strides]
        self.convention = convention
        if convention == "torchvision":
            self._cell_anchors = [torchvision_cell_anchors(s, aspect_ratios) for s in sizes]
        elif convention == "maskrcnn_benchmark":
            self._cell_anchors = [
                maskrcnn_benchmark_cell_anchors(s, aspect_ratios, stride)
                for s, stride in zip(sizes, self.strides)
            ]
        else:
            self._cell_anchors = [cell_anchors(s, aspect_ratios) for s in sizes]
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return self._cell_anchors[0].shape[0]

    def grid_anchors(
        self,
        level: int,
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
        stride: tuple[int, int] | None = None,
    ) -> Tensor:
        """(height * width * A, 4) anchors of ``level`` for a feature map of height x width,
        with the level's stride or ``stride`` = (stride_y, stride_x). Symbolic sizes (a
        ``torch.export`` trace with dynamic shapes) are computed in the graph, not cached."""
        stride_y, stride_x = stride or (self.strides[level],) * 2
        key = (level, height, width, stride_y, stride_x, str(device), dtype)
        if not all(isinstance(v, int) for v in key[1:5]):
            return self._grid(level, height, width, (stride_y, stride_x)).to(device, dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self._grid(level, height, width, (stride_y, stride_x)).to(device, dtype)
            self._cache[key] = anchors
        return anchors

    def _grid(self, level: int, height, width, stride) -> Tensor:
        """(height * width * A, 4) float64 anchors of ``level``, on the CPU."""
        ys = torch.arange(height, dtype=torch.float64) * stride[0]
        xs = torch.arange(width, dtype=torch.float64) * stride[1]
        ys, xs = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        return (shifts + self._cell_anchors[level][None]).reshape(-1, 4)

    def forward(
        self, features: list[Tensor], image_size: tuple[int, int] | None = None
    ) -> list[Tensor]:
        """Anchors for feature maps ``features`` (list of (B, C, H_l, W_l)), one (H_l*W_l*A, 4)
        tensor per level, in the features' device and float32 (the same for every image).
        ``image_size`` (height, width of the padded batch) is needed by the "torchvision"
        convention only, whose strides are image_size // feature size."""
        if len(features) != len(self.strides):
            raise ValueError(
                f"AnchorGenerator: got {len(features)} feature maps, expected {len(self.strides)}"
            )
        if self.convention == "torchvision" and image_size is None:
            raise ValueError("AnchorGenerator: the 'torchvision' convention needs `image_size`")
        anchors = []
        for level, f in enumerate(features):
            height, width = f.shape[-2], f.shape[-1]
            stride = None
            if image_size is not None and self.convention == "torchvision":
                stride = (image_size[0] // height, image_size[1] // width)
            anchors.append(self.grid_anchors(level, height, width, f.device, torch.float32, stride))
        return anchors

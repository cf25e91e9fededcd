"""ResNet / ResNeXt bodies (C2-C5) with FrozenBN, BN, GN or SyncBN.

Module names (what a checkpoint must provide, maskrcnn-benchmark's layout)::

    stem.conv1, stem.bn1                                   7x7/2 conv, norm, ReLU, 3x3/2 max pool
    layer{1..4}.{i}.conv1, .bn1, .conv2, .bn2[, .conv3, .bn3]
    layer{1..4}.0.downsample.0 (1x1 conv), .downsample.1 (norm)   where the shape changes

layer1..layer4 are res2..res5 (C2..C5, strides 4, 8, 16, 32). Norm layers are called bn* whatever
their kind. torchvision's ResNet differs only by the stem (conv1, bn1) and its fc:
see :func:`convert_torchvision_resnet_state_dict`.
"""

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drdet.layers.batch_norm import FrozenBatchNorm2d
from drdet.layers.misc import make_norm_factory
from drdet.layers.winograd import WinogradConv2d

NormArg = str | Callable[[int], nn.Module]

# depth -> (block kind, blocks per stage res2..res5)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv(
    in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1
) -> nn.Conv2d:
    conv_type = WinogradConv2d if k == 3 else nn.Conv2d  # Winograd where it qualifies
    return conv_type(
        in_ch,
        out_ch,
        k,
        stride=stride,
        padding=dilation * (k // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
    )


class Stem(nn.Module):
    """7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max pool: (N, 3, H, W) -> (N, C, H/4, W/4)."""

    # (conv, norm) applied back to back: what fuse_frozen_batchnorm may fold for inference.
    conv_norm_pairs = (("conv1", "bn1"),)

    def __init__(self, out_channels: int, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _downsample(
    in_ch: int, out_ch: int, stride: int, norm_layer: Callable[[int], nn.Module]
) -> nn.Module | None:
    if in_ch == out_ch and stride == 1:
        return None
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride=stride), norm_layer(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34). The stride is in conv1."""

    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm_layer: Callable[[int], nn.Module],
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride=stride, dilation=dilation)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, dilation=dilation)
        self.bn2 = norm_layer(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: out is a fresh norm/conv output that autograd does not keep
        return F.relu_(out)


class Bottleneck(nn.Module):
    """1x1 -> grouped 3x3 -> 1x1 with a residual (ResNet-50+ and ResNeXt).

    ``stride_in_1x1``: the stride sits in conv1 (MSRA/Caffe2 weights) or in conv2 (torchvision).
    """

    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int,
        norm_layer: Callable[[int], nn.Module],
        num_groups: int = 1,
        stride_in_1x1: bool = True,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, stride=s1)
        self.bn1 = norm_layer(bottleneck_channels)
        self.conv2 = _conv(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=s3,
            groups=num_groups,
            dilation=dilation,
        )
        self.bn2 = norm_layer(bottleneck_channels)
        self.conv3 = _conv(bottleneck_channels, out_channels, 1)
        self.bn3 = norm_layer(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: out is a fresh norm/conv output that autograd does not keep
        return F.relu_(out)


def _check_resnet_args(
    depth: int,
    num_groups: int,
    res5_dilation: int,
    freeze_at: int,
    return_stages: Sequence[int],
) -> None:
    """ValueError naming the argument of :class:`ResNet` that is out of range."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
    if not return_stages or any(s not in (1, 2, 3, 4) for s in return_stages):
        raise ValueError(f"return_stages must be a non-empty subset of 1..4, got {return_stages}")
    if RESNET_SPECS[depth][0] == "basic" and num_groups != 1:
        raise ValueError(
            f"ResNet-{depth} uses basic blocks, which need num_groups 1, got {num_groups}"
        )


def _stage(
    kind: str,
    num_blocks: int,
    channels: tuple[int, int, int],
    first_stride: int,
    dilation: int,
    norm_layer: Callable[[int], nn.Module],
    num_groups: int,
    stride_in_1x1: bool,
) -> nn.Sequential:
    """One stage (layer1..layer4): `num_blocks` blocks of `kind` ("basic" or "bottleneck");
    channels = (input, bottleneck width, output); the first block takes the input channels at
    `first_stride`, the others the output channels at stride 1."""
    in_ch, width, out_ch = channels
    layers: list[nn.Module] = []
    for b in range(num_blocks):
        stride, block_in = (first_stride, in_ch) if b == 0 else (1, out_ch)
        if kind == "basic":
            layers.append(BasicBlock(block_in, out_ch, stride, norm_layer, dilation))
        else:
            layers.append(
                Bottleneck(
                    block_in,
                    width,
                    out_ch,
                    stride,
                    norm_layer,
                    num_groups,
                    stride_in_1x1,
                    dilation,
                )
            )
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet / ResNeXt body returning the features of ``return_stages``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_groups, width_per_group: groups and channels per group of the res2 3x3 conv
            (ResNeXt-101 32x8d: 32, 8); the width doubles at each stage. Basic blocks (R-18/34)
            need num_groups 1 and use ``width_per_group`` as their res2 width.
        stem_out_channels: channels of the stem (64).
        res2_out_channels: output channels of res2 for bottleneck bodies (256); doubled per stage.
        stride_in_1x1: see :class:`Bottleneck`.
        res5_dilation: 1, or 2 to keep res5 at stride 16 with dilated 3x3 convs.
        norm: "FrozenBN", "BN", "GN", "SyncBN" or a function ``channels -> nn.Module``.
        freeze_at: 0 trains everything; k >= 1 freezes the stem and layer1..layer{k-1}
            (requires_grad False; their BN layers become FrozenBatchNorm2d).
        return_stages: which of 1..4 (layer1..layer4 = C2..C5) forward returns, in order.
    Attributes: ``out_channels`` and ``strides``, one per returned stage.
    forward: images (N, 3, H, W) float -> list of (N, C_k, ceil(H / s_k), ceil(W / s_k)).
    """

    def __init__(
        self,
        depth: int = 50,
        num_groups: int = 1,
        width_per_group: int = 64,
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        stride_in_1x1: bool = True,
        res5_dilation: int = 1,
        norm: NormArg = "FrozenBN",
        freeze_at: int = 2,
        return_stages: Sequence[int] = (2, 3, 4),
    ) -> None:
        super().__init__()
        _check_resnet_args(depth, num_groups, res5_dilation, freeze_at, return_stages)
        kind, blocks = RESNET_SPECS[depth]
        norm_layer = make_norm_factory(norm) if isinstance(norm, str) else norm

        self.stem = Stem(stem_out_channels, norm_layer)
        in_ch = stem_out_channels
        width = num_groups * width_per_group
        out_ch = width if kind == "basic" else res2_out_channels
        stage_channels, stage_strides, stride_total = [], [], 4
        for idx, n in enumerate(blocks, start=1):
            dilation = res5_dilation if idx == 4 else 1
            first_stride = 1 if idx == 1 or dilation > 1 else 2
            stage = _stage(
                kind,
                n,
                (in_ch, width, out_ch),
                first_stride,
                dilation,
                norm_layer,
                num_groups,
                stride_in_1x1,
            )
            self.add_module(f"layer{idx}", stage)
            in_ch = out_ch
            stride_total *= first_stride
            stage_channels.append(out_ch)
            stage_strides.append(stride_total)
            width, out_ch = width * 2, out_ch * 2

        self.return_stages = tuple(return_stages)
        self.out_channels = [stage_channels[s - 1] for s in self.return_stages]
        self.strides = [stage_strides[s - 1] for s in self.return_stages]
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        # torchvision's initialisation (the body trains from scratch when no weights are loaded).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        """[stem, layer1, layer2, layer3, layer4]: the units FREEZE_CONV_BODY_AT counts."""
        return [
            self.get_submodule(name) for name in ("stem", "layer1", "layer2", "layer3", "layer4")
        ]

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first ``freeze_at`` of :meth:`stages` (0 none, 1 stem, 2 stem+layer1, ...)."""
        for i, stage in enumerate(self.stages()[:freeze_at]):
            for p in stage.parameters():
                p.requires_grad_(False)
            name = "stem" if i == 0 else f"layer{i}"
            setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(stage))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for idx in range(1, 5):
            x = getattr(self, f"layer{idx}")(x)
            if idx in self.return_stages:
                outputs.append(x)
            if idx >= max(self.return_stages):
                break
        return outputs


def convert_torchvision_resnet_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> "OrderedDict[str, torch.Tensor]":
    """Rename a torchvision ResNet/ResNeXt state dict to :class:`ResNet`'s names.

    ``conv1.* -> stem.conv1.*``, ``bn1.* -> stem.bn1.*``, ``layerK.*`` unchanged, ``fc.*`` dropped.
    torchvision puts the bottleneck stride in the 3x3 conv: load into ``stride_in_1x1=False``.
    """
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        if key.startswith("conv1.") or key.startswith("bn1."):
            key = "stem." + key
        elif not key.startswith("layer"):
            raise KeyError(f"unexpected key in a torchvision ResNet state dict: {key}")
        out[key] = value
    return out

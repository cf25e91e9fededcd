"""Feature pyramid on C3-C5 with RetinaNet's extra levels P6 and P7."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drdet.layers.misc import conv_kaiming_uniform


def _fpn_conv(
    in_ch: int, out_ch: int, k: int, norm_layer: Callable[[int], nn.Module] | None, use_relu: bool
) -> nn.Module:
    """Kaiming-uniform(a=1) conv (bias only without a norm), optional norm and ReLU."""
    conv = conv_kaiming_uniform(in_ch, out_ch, k, bias=norm_layer is None)
    if norm_layer is None and not use_relu:
        return conv
    layers: list[nn.Module] = [conv]
    if norm_layer is not None:
        layers.append(norm_layer(out_ch))
    if use_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(C5 or P5); P7 = conv3x3/2(relu(P6)). Kaiming-uniform(a=1), bias 0.

    ``in_channels`` is C5's channels when P6 comes from C5 (``use_c5``), else FPN's out_channels.
    """

    def __init__(self, in_channels: int, out_channels: int, use_c5: bool = True) -> None:
        super().__init__()
        self.p6 = conv_kaiming_uniform(in_channels, out_channels, 3, stride=2)
        self.p7 = conv_kaiming_uniform(out_channels, out_channels, 3, stride=2)
        self.use_c5 = use_c5

    def forward(self, c5: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(c5 if self.use_c5 else p5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Top-down pyramid: lateral 1x1 convs, nearest upsampling, 3x3 output convs.

    Names follow maskrcnn-benchmark: ``fpn_inner{k}`` / ``fpn_layer{k}`` for input k of
    ``stage_ids`` (ResNet layer index: 2, 3, 4 for C3, C4, C5), and ``top_blocks.p6/p7``.

    Args:
        in_channels_list: channels of the inputs, finest first (C3, C4, C5).
        out_channels: channels of every output level (256).
        top_blocks: extra levels after the last one (``LastLevelP6P7``) or None.
        norm_layer: ``channels -> nn.Module`` applied after each FPN conv (GroupNorm for
            MODEL.FPN.USE_GN), or None.
        use_relu: ReLU after each FPN conv (MODEL.FPN.USE_RELU).
        stage_ids: name suffixes of the inputs (default 2, 3, 4 = layer2..layer4).
    forward: list [C3, C4, C5] of (N, C_k, H_k, W_k) -> [P3, P4, P5(, P6, P7)], each
        (N, out_channels, H_k, W_k); P6/P7 halve the size of the previous level (ceil).
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int = 256,
        top_blocks: nn.Module | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
        use_relu: bool = False,
        stage_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not in_channels_list:
            raise ValueError("in_channels_list must name at least one input level")
        stage_ids = (
            list(stage_ids) if stage_ids is not None else list(range(2, 2 + len(in_channels_list)))
        )
        if len(stage_ids) != len(in_channels_list):
            raise ValueError(
                f"stage_ids {stage_ids} and in_channels_list {in_channels_list} differ in length"
            )
        self.inner_names, self.layer_names = [], []
        for k, in_ch in zip(stage_ids, in_channels_list):
            inner, layer = f"fpn_inner{k}", f"fpn_layer{k}"
            self.add_module(inner, _fpn_conv(in_ch, out_channels, 1, norm_layer, use_relu))
            self.add_module(layer, _fpn_conv(out_channels, out_channels, 3, norm_layer, use_relu))
            self.inner_names.append(inner)
            self.layer_names.append(layer)
        self.top_blocks = top_blocks
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.inner_names):
            raise ValueError(
                f"FPN expects {len(self.inner_names)} feature maps, got {len(features)}"
            )
        last_inner = getattr(self, self.inner_names[-1])(features[-1])
        results = [getattr(self, self.layer_names[-1])(last_inner)]
        for feature, inner, layer in zip(
            features[-2::-1], self.inner_names[-2::-1], self.layer_names[-2::-1]
        ):
            lateral = getattr(self, inner)(feature)
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, getattr(self, layer)(last_inner))
        if self.top_blocks is not None:
            results.extend(self.top_blocks(features[-1], results[-1]))
        return results

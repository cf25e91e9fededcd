"""Normalisation factory and conv helpers shared by the backbone (and usable by the head)."""

from collections.abc import Callable

from torch import nn

from drdet.layers.batch_norm import FrozenBatchNorm2d
from drdet.layers.winograd import WinogradConv2d

NORMS = ("FrozenBN", "BN", "GN", "SyncBN")


def group_norm_groups(channels: int, dim_per_group: int = -1, num_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: ``channels // dim_per_group`` when
    ``dim_per_group > 0``, else ``num_groups`` (maskrcnn-benchmark's MODEL.GROUP_NORM rule)."""
    if dim_per_group > 0:
        if channels % dim_per_group != 0:
            raise ValueError(
                f"GroupNorm: {channels} channels not divisible by dim_per_group={dim_per_group}"
            )
        return channels // dim_per_group
    if num_groups < 1 or channels % num_groups != 0:
        raise ValueError(f"GroupNorm: {channels} channels not divisible by num_groups={num_groups}")
    return num_groups


def make_norm_factory(
    norm: str = "FrozenBN",
    gn_dim_per_group: int = -1,
    gn_num_groups: int = 32,
    gn_eps: float = 1e-5,
) -> Callable[[int], nn.Module]:
    """A function ``channels -> norm layer`` for one of ``NORMS``.

    FrozenBN: :class:`FrozenBatchNorm2d`; BN: ``nn.BatchNorm2d``; SyncBN: ``nn.SyncBatchNorm``
    (needs a process group only for a forward in training mode); GN: ``nn.GroupNorm`` with the
    groups of :func:`group_norm_groups` and ``gn_eps``.
    """
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm == "BN":
        return nn.BatchNorm2d
    if norm == "SyncBN":
        return nn.SyncBatchNorm
    if norm == "GN":

        def group_norm(channels: int) -> nn.Module:
            groups = group_norm_groups(channels, gn_dim_per_group, gn_num_groups)
            return nn.GroupNorm(groups, channels, eps=gn_eps)

        return group_norm
    raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")


def conv_kaiming_uniform(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True
) -> nn.Conv2d:
    """Conv2d with padding ``kernel_size // 2``, weight Kaiming-uniform(a=1), bias 0 (the FPN
    initialisation of maskrcnn-benchmark / Detectron)."""
    conv_type = WinogradConv2d if kernel_size == 3 else nn.Conv2d  # Winograd where it qualifies
    conv = conv_type(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv

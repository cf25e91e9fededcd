"""Convolutions whose weight is put in oneDNN's blocked layout once, for inference on the CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from drdet.layers.winograd import PLAIN_CONVS


class PackedConv2d(nn.Module):
    """Inference-only stand-in for an ``nn.Conv2d`` on the CPU (float32, no gradients): the
    weight is reordered once, at the first call, into the blocked layout oneDNN's convolution
    wants (``torch.ops.mkldnn``, the ops torch.compile's CPU backend uses for frozen
    convolutions) instead of at every call; the convolution itself is the same oneDNN primitive
    ``nn.Conv2d`` runs, so the output is the same. Any other input (another device or dtype,
    gradients enabled) goes through ``conv``, and so does everything after packing failed (a
    build without those ops). The packed weight is not copied or pickled (made again on the next
    call) and is not in the state dict.

    forward: (N, C_in, H, W) -> (N, C_out, H', W'), channels_last like the packed weight.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError("PackedConv2d needs numeric zero padding")
        self.conv = conv
        self._packed: Tensor | None = None
        self._failed = False

    def _args(self):
        c = self.conv
        return list(c.padding), list(c.stride), list(c.dilation), c.groups

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if (
            self._failed
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or c.weight.dtype != torch.float32
            or (torch.is_grad_enabled() and (x.requires_grad or c.weight.requires_grad))
        ):
            return c(x)
        padding, stride, dilation, groups = self._args()
        if self._packed is None:
            try:
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    c.weight, padding, stride, dilation, groups, list(x.shape)
                )
                out = torch.ops.mkldnn._convolution_pointwise(
                    x, packed, c.bias, padding, stride, dilation, groups, "none", [], ""
                )
            except (AttributeError, RuntimeError, NotImplementedError):
                self._failed = True
                return c(x)
            self._packed = packed
            return out
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed, c.bias, padding, stride, dilation, groups, "none", [], ""
        )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_packed"] = None  # an opaque oneDNN tensor: not copyable; packed again on use
        return state


def pack_convolutions(module: nn.Module) -> int:
    """Replaces, in place, every plain convolution (``PLAIN_CONVS``) inside ``module`` by a
    :class:`PackedConv2d` around it; returns how many. For inference copies on the CPU only."""
    count = 0
    for name, child in list(module.named_children()):
        if (
            type(child) in PLAIN_CONVS
            and isinstance(child, nn.Conv2d)
            and isinstance(child.padding, tuple)
            and child.padding_mode == "zeros"
        ):
            setattr(module, name, PackedConv2d(child))
            count += 1
        else:
            count += pack_convolutions(child)
    return count

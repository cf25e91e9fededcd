"""The inference copy of a detector: eval mode, FrozenBN folded, channels_last, packed weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from drdet.layers.batch_norm import fuse_frozen_batchnorm
from drdet.layers.packed_conv import pack_convolutions


def prepare_for_inference(
    model: nn.Module, channels_last: bool | None = None, prepack: bool | None = None
) -> nn.Module:
    """A copy of ``model`` (a RetinaNet, or a DistributedDataParallel around one) set up for
    inference, used by the Predictor and the test loop; ``model`` itself is not modified, so its
    state dict stays what checkpoints hold.

    The copy is in eval mode, with every FrozenBatchNorm2d that follows a convolution folded
    into it (same detections, up to float rounding: one convolution with a bias instead of a
    convolution and a per-channel affine), and its weights in channels_last memory format when
    ``channels_last`` (default: on the CPU, where oneDNN's convolutions are faster in NHWC and
    the head's outputs then flatten without a copy), and with ``prepack`` (default: on the CPU
    when oneDNN is available) every convolution a
    :class:`~drdet.layers.packed_conv.PackedConv2d`, whose weight is put in oneDNN's layout once
    rather than at every call. Its parameters do not require gradients.
    Make a new copy after changing ``model``'s weights; the copy is for running, not for saving.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    tensor = next(model.parameters(), None)
    on_cpu = tensor is None or tensor.device.type == "cpu"
    if channels_last is None:
        channels_last = on_cpu
    if prepack is None:
        prepack = on_cpu and torch.backends.mkldnn.is_available()
    inference_model = copy.deepcopy(model).eval()
    fuse_frozen_batchnorm(inference_model)
    inference_model.requires_grad_(False)
    if channels_last:
        inference_model.to(memory_format=torch.channels_last)
    if prepack:
        pack_convolutions(inference_model)
    return inference_model

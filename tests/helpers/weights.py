"""Random weights that behave like trained ones, for tests that compare two ways of running a
detector (fusion, export): activations of a trained network's size at every depth."""

import torch
from torch import nn

from drdet.layers.batch_norm import FrozenBatchNorm2d


def calibrate_frozen_bn(model: nn.Module, images) -> nn.Module:
    """Sets every FrozenBatchNorm2d's statistics to those of its input on ``images`` (one
    forward; each layer sees the already-normalised output of the layers before it), with random
    affine values near (1, 0): activations of a trained network's size, whatever the depth."""
    gen = torch.Generator().manual_seed(1)

    def hook(bn, inputs):
        x = inputs[0].detach()
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        bn.running_var.copy_(x.var((0, 2, 3)))
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) * 0.5 + 0.75)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    with torch.no_grad():
        model.eval()(images)
    for h in handles:
        h.remove()
    return model

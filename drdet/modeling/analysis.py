"""Parameter counts and FLOPs of a detector (tools/analyze_model.py, tools/benchmark_model.py).

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one forward pass. Its
convention, kept here: one multiply-add is 2 FLOPs (a 3x3 conv with C_in inputs and C_out outputs
costs 2 * C_in * 9 * C_out per output position); only convolutions and matrix products are
counted (biases, normalisation, activations, pooling, NMS are not); GMACs = GFLOPs / 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Reported parts of a detector: (name shown, attribute path in the detector).
PARTS = (("backbone", "backbone.body"), ("fpn", "backbone.fpn"), ("head", "head"))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, *inputs) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of ``module(*inputs)`` under torch.no_grad, per submodule:
    {"": total, "<dotted submodule name>": its FLOPs, ...}."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    top = type(module).__name__
    flops = {}
    for name, per_op in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == top else name[len(top) + 1 :] if name.startswith(top + ".") else name
        flops[key] = int(sum(per_op.values()))
    flops.setdefault("", int(counter.get_total_flops()))
    return flops


def _random_image(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """A (3, H, W) image of 0-255 values on the model's device."""
    height, width = input_size
    device = next(model.parameters()).device
    return torch.rand(3, height, width, device=device) * 255


def forward_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """FLOPs (2 per multiply-add, :func:`count_flops`) of the detector ``model``'s forward on
    one (3, H, W) image, counted in eval mode; the model's mode is restored."""
    training = model.training
    model.eval()
    try:
        return count_flops(model, [_random_image(model, input_size)])[""]
    finally:
        model.train(training)


def analyze(model: nn.Module, input_size: Sequence[int]) -> dict[str, dict[str, float]]:
    """{"total"|"backbone"|"fpn"|"head": {"params": count, "gflops": GFLOPs}} of the detector
    ``model`` on one (3, H, W) image in eval mode (the model is left in eval mode)."""
    model.eval()
    flops = count_flops(model, [_random_image(model, input_size)])
    report = {"total": {"params": count_parameters(model), "gflops": flops[""] / 1e9}}
    for shown, path in PARTS:
        report[shown] = {
            "params": count_parameters(model.get_submodule(path)),
            "gflops": flops.get(path, 0) / 1e9,
        }
    return report

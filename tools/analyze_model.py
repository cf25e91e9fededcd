#!/usr/bin/env python
r"""Parameter count and FLOPs of the detector of a config, for one image of a given size.

    python tools/analyze_model.py --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml \
        --input-size 800 1216

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one forward pass in eval mode
(the detector's own preprocessing, backbone, FPN, head and post-processing). Its convention, kept
here: one multiply-add is 2 FLOPs (a 3x3 conv with C_in inputs and C_out outputs costs
2 * C_in * 9 * C_out per output position); only convolutions and matrix products are counted
(biases, normalisation, activations, pooling, NMS are not); GMACs = GFLOPs / 2. The image is
padded to a multiple of DATALOADER.SIZE_DIVISIBILITY as in training and testing; no resize is
applied (give the size the network sees, e.g. 800 x 1216 for COCO's 1x setting).
"""

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from drdet.engine.defaults import default_argument_parser, load_config, parse_tool_args  # noqa: E402
from drdet.modeling import build_detector  # noqa: E402
from drdet.utils.errors import run_main  # noqa: E402

# Reported parts: (name shown, attribute path in the detector).
PARTS = (("backbone", "backbone.body"), ("fpn", "backbone.fpn"), ("head", "head"))


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        default=(800, 1216),
        metavar=("H", "W"),
        help="image height and width (default 800 1216)",
    )
    args = parse_tool_args(parser, argv)
    if min(args.input_size) <= 0:
        parser.error(f"--input-size must be positive, got {args.input_size}")
    return args


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


def forward_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """FLOPs (2 per multiply-add, :func:`count_flops`) of the detector ``model``'s forward on
    one (3, H, W) image, counted in eval mode; the model's mode is restored."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    height, width = input_size
    try:
        return count_flops(model, [torch.rand(3, height, width, device=device) * 255])[""]
    finally:
        model.train(training)


def analyze(model: nn.Module, input_size: Sequence[int]) -> dict[str, dict[str, float]]:
    """{"total"|"backbone"|"fpn"|"head": {"params": count, "gflops": GFLOPs}} of the detector
    ``model`` on one (3, H, W) image in eval mode (the model is left in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    height, width = input_size
    image = torch.rand(3, height, width, device=device) * 255
    flops = count_flops(model, [image])
    report = {"total": {"params": count_parameters(model), "gflops": flops[""] / 1e9}}
    for shown, path in PARTS:
        report[shown] = {
            "params": count_parameters(model.get_submodule(path)),
            "gflops": flops.get(path, 0) / 1e9,
        }
    return report


def main(argv=None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    model = build_detector(cfg)
    report = analyze(model, args.input_size)
    h, w = args.input_size
    print(f"{cfg.MODEL.BACKBONE.CONV_BODY}, input {h}x{w}, FLOPs with 1 multiply-add = 2 FLOPs")
    print(f"{'part':<10}{'params':>14}{'GFLOPs':>12}")
    for part, values in report.items():
        print(f"{part:<10}{values['params']:>14,}{values['gflops']:>12.2f}")
    return report


if __name__ == "__main__":
    sys.exit(run_main(main))

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

import sys

from drdet.engine.defaults import default_argument_parser, load_config, parse_tool_args
from drdet.modeling import build_detector
from drdet.modeling.analysis import analyze
from drdet.utils.errors import run_main


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

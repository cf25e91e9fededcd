#!/usr/bin/env python
"""onnxruntime against drdet's eager inference on the CPU, per image, side by side in one run:
the detector of --config-file (with MODEL.WEIGHT, or seeded random weights) is exported to
.onnx in a temporary folder, then both run on the same image in turn (median of --reps calls
each after --warmup rounds; a change of machine load hits both alike). drdet_eager is what
the Predictor and test_net run (prepare_for_inference: channels_last, packed convolutions on
the CPU); drdet_eager_nchw the same copy in the default memory format.

    python tools/benchmark_export.py --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml \
        --size 800 1333 MODEL.DEVICE cpu
    python tools/benchmark_export.py --config-file configs/synthetic/dr_R-18-FPN_synthetic.yaml \
        --size 256 256 MODEL.DEVICE cpu MODEL.WEIGHT output/demo/model_final.pth

docs/BENCHMARKS.md ("Exported models") has the figures.
"""

import sys

import torch

from drdet.engine.defaults import default_argument_parser, load_config, parse_tool_args
from drdet.export.benchmark import benchmark_export
from drdet.utils.errors import run_main


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parse_tool_args(parser, argv)


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    height, width = args.size
    result = benchmark_export(cfg, height, width, args.warmup, args.reps)
    print(f"{args.config_file} at {height} x {width}, torch threads {torch.get_num_threads()}:")
    for name in ("drdet_eager", "drdet_eager_nchw", "onnxruntime"):
        count = int(result[f"{name}_detections"])
        print(f"  {name:16s} {1e3 * result[name]:9.1f} ms / image   ({count} detections)")
    print(f"  export (trace + ONNX conversion) {result['export_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))

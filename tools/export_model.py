#!/usr/bin/env python
r"""Export a trained dense detector (RetinaNet, FCOS, ...) as one end-to-end model: the
normalisation, padding, network, box decoding, top-k, score threshold, class-aware NMS and the
TEST.DETECTIONS_PER_IMG best per image, all in the graph.

    python tools/export_model.py --config-file configs/synthetic/dr_R-18-FPN_synthetic.yaml \
        --output model.onnx MODEL.WEIGHT output/demo/model_final.pth
    python tools/export_model.py --config-file ... --output model.pt2 --output model.onnx MODEL.WEIGHT ...

By the suffix of --output:
  .onnx  ONNX opset 18 from the dynamo-based exporter (torch.onnx.export(dynamo=True)), NMS as
         the standard NonMaxSuppression op; runs in onnxruntime.
  .pt2   a torch.export ExportedProgram (torch.export.save); torch.export.load runs it once
         drdet.export is imported (it registers the NMS op, torchvision's NMS inside).
Input "images": float32 (B, 3, H, W), the resized images before normalisation (BGR 0-255 when
INPUT.TO_BGR255, else RGB 0-1), each image taken as the whole H x W; B, H and W are dynamic.
Outputs "boxes" (B, K, 4) x1y1x2y2 in pixels of the input, "scores" (B, K), "labels" (B, K)
int64 in 1..C, "num_detections" (B,); K = TEST.DETECTIONS_PER_IMG, entries past
num_detections are zeros. The file records the checkpoint's classes and the config values it
holds. Run it with MODEL.WEIGHT model.onnx (or .pt2) in tools/test_net.py, tools/demo.py and
drdet.Predictor. An existing --output is replaced only with --force.
"""

import sys

from drdet.engine.defaults import (
    add_allow_pickle_argument,
    default_argument_parser,
    load_config,
    parse_tool_args,
)
from drdet.export.export import export_model
from drdet.utils.errors import run_main
from drdet.utils.logger import setup_logger


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    parser.add_argument(
        "--output",
        required=True,
        action="append",
        metavar="FILE",
        help="model.onnx or model.pt2; repeat the flag for both files from one trace",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    add_allow_pickle_argument(parser)
    return parse_tool_args(parser, argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    setup_logger("drdet", None, 0)
    paths = export_model(cfg, args.output, allow_pickle=args.allow_pickle, force=args.force)
    print(f"exported {cfg.MODEL.WEIGHT} -> {', '.join(paths)}")
    return paths


if __name__ == "__main__":
    sys.exit(run_main(main))

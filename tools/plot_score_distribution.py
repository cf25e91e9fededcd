#!/usr/bin/env python
r"""The paper's Fig. 4/5 for any model and dataset: the empirical density of the confidence
(sigmoid score) of foreground and background anchors, before NMS, for one or several models.

    python tools/plot_score_distribution.py --output scores.png \
        --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml --weights dr/model_final.pth --label DR \
        --config-file configs/retinanet/retinanet_R-50-FPN_1x.yaml --weights focal/model_final.pth \
        --label focal --num-images 200

Per image of the dataset (DATASETS.TEST[0] of the first config, or --dataset, with the test
transforms), the backbone and head run in eval mode and the anchors are matched to the ground
truth with the model's own matcher (its classification_scores method; FCOS: its locations and
their assignment, and the class score without centre-ness):
  - foreground: anchors matched to a box (label k >= 1); the score of class k;
  - background: anchors below the background threshold; the scores of all their classes,
    subsampled (uniformly, seeded) to --num-background entries in all for speed.
Ignored anchors (between the thresholds) are left out. The means are printed.
"""

import os
import sys

import numpy as np

from drdet.data.catalog import get_dataset
from drdet.data.transforms import build_transforms
from drdet.engine.defaults import add_override_arguments, load_config, parse_tool_args, tool_parser
from drdet.engine.score_distribution import collect, plot
from drdet.utils.errors import UserFileNotFoundError, UserValueError, run_main


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--config-file",
        action="append",
        required=True,
        metavar="FILE",
        help="yaml config of a model (repeat for each model)",
    )
    parser.add_argument(
        "--weights",
        action="append",
        required=True,
        metavar="PTH",
        help="checkpoint of that model (one per --config-file)",
    )
    parser.add_argument("--label", action="append", help="legend label (one per model)")
    parser.add_argument("--dataset", help="dataset name (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=100, help="images used (default 100)")
    parser.add_argument(
        "--num-background",
        type=int,
        default=200000,
        help="background scores kept in all (default 200000)",
    )
    parser.add_argument("--bins", type=int, default=50, help="histogram bins on [0, 1]")
    parser.add_argument("--output", required=True, metavar="PNG", help="figure to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the background subsampling")
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        dest="opts_flag",
        help="config overrides applied to every model (or give them without "
        "--opts, anywhere on the command line)",
    )
    add_override_arguments(parser)
    args = parse_tool_args(parser, argv)
    args.opts = args.opts_flag + args.opts
    if len(args.weights) != len(args.config_file):
        parser.error(f"{len(args.weights)} --weights for {len(args.config_file)} --config-file")
    if args.label and len(args.label) != len(args.config_file):
        parser.error(f"{len(args.label)} --label for {len(args.config_file)} --config-file")
    if args.num_images <= 0 or args.num_background <= 0:
        parser.error("--num-images and --num-background must be positive")
    return args


def main(argv=None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    args = parse_args(argv)
    labels = args.label or [os.path.basename(c) for c in args.config_file]
    cfgs = [load_config(c, args.opts) for c in args.config_file]
    name = args.dataset or (cfgs[0].DATASETS.TEST[0] if cfgs[0].DATASETS.TEST else None)
    if not name:
        raise UserValueError("no dataset: pass --dataset or set DATASETS.TEST")
    results = []
    for cfg, weights, label in zip(cfgs, args.weights, labels):
        if not os.path.isfile(weights):
            raise UserFileNotFoundError(f"weights {weights!r} do not exist")
        dataset = get_dataset(name, build_transforms(cfg, is_train=False), is_train=False)
        fg, bg = collect(cfg, weights, dataset, args.num_images, args.num_background, args.seed)
        print(
            f"{label}: foreground mean {fg.mean() if fg.size else float('nan'):.4f} "
            f"({fg.size} anchors), background mean {bg.mean():.4f} ({bg.size} scores)"
        )
        results.append((label, fg, bg))
    plot(results, args.output, args.bins)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))

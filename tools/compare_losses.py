#!/usr/bin/env python
r"""DR loss vs focal loss on your data in one command: trains both on the same data, schedule
and seeds, evaluates both with the COCO metric and writes OUTPUT/report.md (AP table side by
side with the difference, the score distributions of the paper's Fig. 4/5, training curves).

    python tools/compare_losses.py                                  # built-in synthetic set
    python tools/compare_losses.py --config-file configs/voc/dr_R-50-FPN_voc07.yaml --num-gpus 8
    python tools/compare_losses.py --dataset coco:train.json:images \
        --test-dataset coco:val.json:images --max-iter 2000 --output-dir out/mine
    python tools/compare_losses.py --ablation table2 --max-iter 300  # the paper's ablations
    python tools/compare_losses.py --seeds 3 --num-gpus 8 --gpus-per-run 2  # 4 runs at once

Each run trains through tools/train_net.py in its own folder OUTPUT/<run>/ (torchrun when it
has more than one GPU). With --seeds N each loss trains N times (OUTPUT/<loss>_seed<k>/), and
the report gives each metric's mean with min and max, says whether the difference is larger than
the spread between seeds, and plots every run (seeds.png). Each loss brings its own setup
(prior, matcher, score threshold, NMS; see drdet/config/setups.py), so the config may name
either loss. Running the command again with the same arguments resumes: finished runs are
skipped, a half-finished one continues from its last checkpoint. Trailing KEY VALUE pairs
override the config of every run.

--ablation table1|table2|table3|grouping runs the variants of configs/ablations/ (their own keys,
applied to --config-file) and prints the paper's table layout with the paper's COCO minival AP
beside the measured figures.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Sequence

from drdet.engine.compare import (
    ABLATIONS,
    Progress,
    Settings,
    plan_comparison,
    torchrun_command,
    train_runs,
    write_figures,
    write_report,
)
from drdet.engine.defaults import tool_parser
from drdet.utils.errors import run_main

TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(os.path.dirname(TOOLS), "configs")
DEFAULT_CONFIG = os.path.join("configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"yaml config of the model and data (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        help="training set: a registered name or a coco:/voc:/synthetic: form "
        "(default: the config's DATASETS.TRAIN)",
    )
    parser.add_argument(
        "--test-dataset",
        metavar="NAME",
        help="evaluation set (default: the config's DATASETS.TEST, or --dataset)",
    )
    parser.add_argument("--output-dir", default=os.path.join("output", "compare"), metavar="DIR")
    parser.add_argument(
        "--losses",
        nargs=2,
        default=["DR", "FOCAL"],
        metavar="LOSS",
        help="the two classification losses compared (default DR FOCAL)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-iter",
        type=int,
        metavar="N",
        help="iterations per run; SOLVER.STEPS, WARMUP_ITERS and "
        "CHECKPOINT_PERIOD scale with it (default: the config's)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train each loss N times (DATALOADER.SEED 0..N-1: data order and initialisation); "
        "the report shows mean [min, max] and whether the difference exceeds the spread",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=0,
        metavar="N",
        help="GPUs to use (a run on more than one goes through torchrun); 0: the config's device",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="K",
        help="GPUs of each run (default: all N, one run at a time); N // K runs train at once",
    )
    parser.add_argument(
        "--ablation",
        choices=sorted(ABLATIONS),
        help="run the paper's ablation instead of DR vs focal",
    )
    parser.add_argument(
        "--score-images",
        type=int,
        default=50,
        metavar="N",
        help="test images for the score distributions (default 50)",
    )
    parser.add_argument(
        "--keep-explicit",
        action="store_true",
        help="let the config's own prior/matcher/threshold keys apply to both "
        "losses (by default such a config is refused)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for all runs")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    _add_data_arguments(parser)
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    if args.max_iter is not None and args.max_iter < 1:
        parser.error("--max-iter must be >= 1")
    if args.num_gpus < 0 or args.score_images < 1 or args.seeds < 1:
        parser.error("--num-gpus must be >= 0, --score-images and --seeds >= 1")
    if args.gpus_per_run is not None and not 1 <= args.gpus_per_run <= max(args.num_gpus, 0):
        parser.error(f"--gpus-per-run must be between 1 and --num-gpus ({args.num_gpus})")
    return args


def train_command(args: argparse.Namespace, run_opts: list[str], resume: bool) -> list[str]:
    """The command line that trains one run: tools/train_net.py (through torchrun when a run
    has more than one GPU)."""
    script = [os.path.join(TOOLS, "train_net.py"), "--config-file", args.config_file]
    gpus = args.gpus_per_run or args.num_gpus
    return torchrun_command(script + (["--resume"] if resume else []) + run_opts, gpus)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Runs the comparison; returns {run label: COCO metrics}."""
    start = time.time()
    args = parse_args(argv)
    comparison = plan_comparison(Settings(**vars(args)), CONFIGS)  # CompareError: exit 2
    progress = Progress(len(comparison.runs) + 2)
    results = train_runs(comparison, functools.partial(train_command, args), progress)
    progress.start("figures: score distributions and training curves")
    figures = write_figures(comparison, results)
    progress.start("report")
    path = write_report(comparison, results, figures, time.time() - start)
    print(f"wrote {path}")
    return {run.label: results[run.name] for run in comparison.runs}


if __name__ == "__main__":
    sys.exit(run_main(main))

#!/usr/bin/env python
r"""Loss curves and evaluation AP over iterations from training runs' metrics.jsonl, as one PNG.

    python tools/plot_metrics.py output/dr_R-50/metrics.jsonl output/focal_R-50 \
        --labels DR focal --output curves.png

Each run is a metrics.jsonl file or an OUTPUT_DIR holding one. Left panel: every "loss*" key
(loss, loss_cls, loss_reg) against "iteration"; right panel: evaluation AP (records with
"eval/<dataset>": {"AP": ...} written by the trainer, or flat "eval/.../AP" keys), in percent.
A resumed run's records are read in order; a repeated iteration keeps its last value.
"""

import sys

from drdet.engine.defaults import tool_parser
from drdet.utils.errors import run_main
from drdet.utils.training_curves import plot_runs


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="metrics.jsonl or OUTPUT_DIR")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: paths)")
    parser.add_argument("--output", required=True, metavar="PNG", help="figure to write")
    parser.add_argument("--metric", default="AP", help="evaluation metric to plot (default AP)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"{len(args.labels)} --labels for {len(args.runs)} runs")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = plot_runs(args.runs, args.labels, args.output, args.metric)
    for run, (losses, evals) in zip(args.runs, data):
        last = {k: v[max(v)] for k, v in {**losses, **evals}.items()}
        print(f"{run}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.items())))
    print(f"wrote {args.output}")
    return data


if __name__ == "__main__":
    sys.exit(run_main(main))

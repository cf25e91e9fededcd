#!/usr/bin/env python
"""Train a detector (Dr. Retina or the focal-loss RetinaNet) from a config.

    python tools/train_net.py --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml [KEY VALUE ...]
    torchrun --nproc_per_node=8 tools/train_net.py --config-file ... SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file ... --resume          # continue OUTPUT_DIR's last run

KEY VALUE pairs override the config (e.g. OUTPUT_DIR out/ MODEL.DEVICE cpu); flags may come
before, between or after them. Several
machines: torchrun's own flags (--nnodes, --node_rank, --master_addr, --master_port). The final
model is evaluated on DATASETS.TEST unless --skip-test.
"""

import sys

from drdet.engine.defaults import default_argument_parser, default_setup, parse_tool_args
from drdet.engine.training import final_evaluation, train
from drdet.utils.errors import run_main


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint (model, optimizer, "
        "scheduler, iteration, data order, RNG)",
    )
    parser.add_argument("--skip-test", action="store_true", help="do not evaluate at the end")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let MODEL.WEIGHT be a legacy pickle (.pkl); unpickling runs code "
        "from the file, so only for files you trust",
    )
    return parse_tool_args(parser, argv)


def main(argv=None, hooks=()):
    """Runs the command line `argv` (default: sys.argv[1:]). `hooks` (drdet.engine.hooks.HookBase
    instances) run after the built-in ones every iteration: a user script adds its own periodic
    action with ``train_net.main(argv, hooks=[MyHook()])``. Returns the final evaluation
    {dataset: metrics} (rank 0), or None when a hook stopped the run early, skipping the test, or
    off rank 0. Stopped by SIGINT/SIGTERM, it raises SystemExit(128 + the signal number) once
    the checkpoint is written: the command exits 130 / 143, not 0."""
    args = parse_args(argv)
    cfg, device, log = default_setup(args.config_file, args.opts, args.resume, config_record=None)
    result = train(cfg, device, log, args.resume, args.allow_pickle, hooks)
    if result.iteration < cfg.SOLVER.MAX_ITER:
        log.info(
            "Stopped at iteration %d of %d; continue with --resume",
            result.iteration,
            cfg.SOLVER.MAX_ITER,
        )
        if result.exit_status:  # the checkpoint is written: exit 128 + the signal, not 0
            raise SystemExit(result.exit_status)
        return None
    if args.skip_test:
        return None
    return final_evaluation(cfg, result.model, device, result.iteration)


if __name__ == "__main__":
    sys.exit(run_main(main))

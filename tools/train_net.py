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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from drdet.checkpoint import Checkpointer, classes_record, set_rng_state  # noqa: E402
from drdet.data import build_data_loader  # noqa: E402
from drdet.engine.defaults import (  # noqa: E402
    check_num_classes,
    default_argument_parser,
    default_setup,
    evaluate_datasets,
    format_metric,
    parse_tool_args,
)
from drdet.engine.speed import apply_speed_switches  # noqa: E402
from drdet.engine.trainer import do_train  # noqa: E402
from drdet.modeling import build_detector  # noqa: E402
from drdet.solver import make_lr_scheduler, make_optimizer  # noqa: E402
from drdet.utils import comm  # noqa: E402
from drdet.utils.errors import run_main  # noqa: E402
from drdet.utils.io import remove_stale_temporary_files  # noqa: E402
from drdet.utils.metric_logger import JSONLinesWriter  # noqa: E402
from drdet.utils.signals import StopRequest  # noqa: E402


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
    cfg, device, log = default_setup(args.config_file, args.opts, resume=args.resume)
    if comm.is_main_process():
        remove_stale_temporary_files(cfg.OUTPUT_DIR, log)

    model = build_detector(cfg).to(device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(model, optimizer, scheduler, save_dir=cfg.OUTPUT_DIR, log=log)
    if args.resume:
        extra = checkpointer.resume()
    else:
        if checkpointer.has_checkpoint():
            log.warning(
                "%s already holds a checkpoint; starting from scratch anyway (pass "
                "--resume to continue it)",
                cfg.OUTPUT_DIR,
            )
        extra = {}
        if cfg.MODEL.WEIGHT:
            checkpointer.load(
                cfg.MODEL.WEIGHT, allow_pickle=args.allow_pickle, load_training_state=False
            )
    start_iter = int(extra.get("iteration", 0))
    if "rng" in extra:
        set_rng_state(extra["rng"])

    apply_speed_switches(cfg, model)  # SPEED.*: all off by default
    train_model = model
    if comm.get_world_size() > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    data_loader = build_data_loader(cfg, is_train=True, start_iter=start_iter)
    check_num_classes(cfg, data_loader.dataset)
    checkpointer.record["classes"] = classes_record(data_loader.dataset)

    def evaluate(iteration):
        return evaluate_datasets(cfg, model, device, tag=f"iter_{iteration:07d}")

    with StopRequest() as stop:
        last = do_train(
            cfg,
            train_model,
            data_loader,
            optimizer,
            scheduler,
            checkpointer,
            device,
            start_iter=start_iter,
            evaluate=evaluate,
            should_stop=stop,
            hooks=hooks,
        )
    comm.check_replicas_identical(model)
    if comm.get_world_size() > 1:
        log.info("Parameters identical on all %d ranks", comm.get_world_size())
    if last < cfg.SOLVER.MAX_ITER:
        log.info("Stopped at iteration %d of %d; continue with --resume", last, cfg.SOLVER.MAX_ITER)
        if stop.requested:  # the checkpoint is written: exit 128 + the signal, not 0
            raise SystemExit(stop.exit_status)
        return None
    if args.skip_test:
        return None
    results = evaluate_datasets(cfg, model, device, tag="final")
    if results:
        with JSONLinesWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.jsonl")) as metrics_file:
            metrics_file.write(
                {
                    "iteration": last,
                    **{f"eval/{name}/{k}": v for name, m in results.items() for k, v in m.items()},
                }
            )
        for name, metrics in results.items():
            print(f"{name}: " + "  ".join(format_metric(k, v) for k, v in metrics.items()))
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))

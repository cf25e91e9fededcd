#!/usr/bin/env python
"""Train a detector (Dr. Retina or the focal-loss RetinaNet) from a config.

    python tools/train_net.py --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml [KEY VALUE ...]
    torchrun --nproc_per_node=8 tools/train_net.py --config-file ... SOLVER.IMS_PER_BATCH 16
    python tools/train_net.py --config-file ... --resume          # continue OUTPUT_DIR's last run

Trailing KEY VALUE pairs override the config (e.g. OUTPUT_DIR out/ MODEL.DEVICE cpu). Several
machines: torchrun's own flags (--nnodes, --node_rank, --master_addr, --master_port). The final
model is evaluated on DATASETS.TEST unless --skip-test.
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from drdet.engine.defaults import default_setup, evaluate_datasets, format_metric  # noqa: E402
from drdet.engine.trainer import do_train  # noqa: E402
from drdet.data import build_data_loader  # noqa: E402
from drdet.modeling import build_detector  # noqa: E402
from drdet.solver import make_lr_scheduler, make_optimizer  # noqa: E402
from drdet.utils import comm  # noqa: E402
from drdet.checkpoint import Checkpointer, set_rng_state  # noqa: E402
from drdet.utils.io import TMP_PREFIX  # noqa: E402
from drdet.utils.metric_logger import JSONLinesWriter  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint (model, optimizer, "
                             "scheduler, iteration, data order, RNG)")
    parser.add_argument("--skip-test", action="store_true", help="do not evaluate at the end")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let MODEL.WEIGHT be a legacy pickle (.pkl); unpickling runs code "
                             "from the file, so only for files you trust")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


class StopRequest:
    """SIGINT/SIGTERM handler, as a context manager: the loop finishes its iteration, saves a
    checkpoint and returns; a second signal stops at once. The previous handlers come back on
    exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def check_num_classes(cfg, dataset) -> None:
    """MODEL.RETINANET.NUM_CLASSES counts the background (maskrcnn-benchmark): it must be the
    number of categories of the training set + 1."""
    parts = getattr(dataset, "datasets", [dataset])
    counts = {getattr(d, "name", "?"): d.num_classes for d in parts}
    expected = max(counts.values()) + 1
    if cfg.MODEL.RETINANET.NUM_CLASSES != expected:
        raise ValueError(
            f"MODEL.RETINANET.NUM_CLASSES is {cfg.MODEL.RETINANET.NUM_CLASSES}, but the training "
            f"set has {counts} categories: set it to {expected} (categories + background)")


def remove_stale_temporary_files(output_dir: str, log) -> list:
    """Removes the temporary files (".tmp-<name>.<random>") that a run killed while writing a
    checkpoint or another file atomically left in `output_dir` (top level only); the files they
    would have replaced are intact. Call on the main process before the run writes anything."""
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed.append(name)
    if removed:
        log.warning("Removed %d temporary files of an interrupted run from %s: %s", len(removed),
                    output_dir, ", ".join(removed))
    return removed


def main(argv=None):
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
            log.warning("%s already holds a checkpoint; starting from scratch anyway (pass "
                        "--resume to continue it)", cfg.OUTPUT_DIR)
        extra = {}
        if cfg.MODEL.WEIGHT:
            checkpointer.load(cfg.MODEL.WEIGHT, allow_pickle=args.allow_pickle,
                              load_training_state=False)
    start_iter = int(extra.get("iteration", 0))
    if "rng" in extra:
        set_rng_state(extra["rng"])

    train_model = model
    if comm.get_world_size() > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)

    data_loader = build_data_loader(cfg, is_train=True, start_iter=start_iter)
    check_num_classes(cfg, data_loader.dataset)

    def evaluate(iteration):
        return evaluate_datasets(cfg, model, device, tag=f"iter_{iteration:07d}")

    with StopRequest() as stop:
        last = do_train(cfg, train_model, data_loader, optimizer, scheduler, checkpointer, device,
                        start_iter=start_iter, evaluate=evaluate, should_stop=stop)
    comm.check_replicas_identical(model)
    if comm.get_world_size() > 1:
        log.info("Parameters identical on all %d ranks", comm.get_world_size())
    if last < cfg.SOLVER.MAX_ITER:
        log.info("Stopped at iteration %d of %d; continue with --resume", last, cfg.SOLVER.MAX_ITER)
        return None
    if args.skip_test:
        return None
    results = evaluate_datasets(cfg, model, device, tag="final")
    if results:
        with JSONLinesWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.jsonl")) as metrics_file:
            metrics_file.write({"iteration": last, **{f"eval/{name}/{k}": v for name, m
                                                      in results.items() for k, v in m.items()}})
        for name, metrics in results.items():
            print(f"{name}: " + "  ".join(format_metric(k, v) for k, v in metrics.items()))
    return results


if __name__ == "__main__":
    main()

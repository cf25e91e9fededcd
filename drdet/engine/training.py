"""Training from a config, end to end, as tools/train_net.py runs it: the detector, optimizer,
schedule and checkpointer built from the config; a fresh start (from MODEL.WEIGHT) or a resume
(model, optimizer, schedule, iteration, data order, RNG); the speed switches; DDP over the
process group; the loop, which SIGINT/SIGTERM stop with a checkpoint; then the evaluation of
the final model on DATASETS.TEST.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from drdet.checkpoint import Checkpointer, classes_record, set_rng_state
from drdet.data import build_data_loader
from drdet.engine.defaults import (
    check_num_classes,
    evaluate_datasets,
    format_metric,
    write_config_record,
)
from drdet.engine.hooks import HookBase, eval_metrics_record
from drdet.engine.speed import apply_speed_switches
from drdet.engine.trainer import do_train
from drdet.modeling import build_detector
from drdet.solver import make_lr_scheduler, make_optimizer
from drdet.utils import comm
from drdet.utils.errors import UserValueError
from drdet.utils.io import remove_stale_temporary_files
from drdet.utils.metric_logger import JSONLinesWriter
from drdet.utils.signals import StopRequest


@dataclass
class TrainingResult:
    """The trained model (not wrapped in DDP), the last iteration run, and the exit status of
    a run that a signal stopped (128 + the signal number; 0 otherwise)."""

    model: nn.Module
    iteration: int
    exit_status: int = 0


@dataclass
class TrainingState:
    """What the loop starts from: the model, its optimizer and schedule, their checkpointer and
    the number of iterations already done."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    checkpointer: Checkpointer
    start_iter: int
    # (MODEL.WEIGHT, its classifier's class count) when the run starts from MODEL.WEIGHT's
    # classifier (not resumed, not reset), for the class check against the training set.
    weight_classes: tuple[str, int] | None = None


def build_for_training(
    cfg, device: torch.device, log: logging.Logger, resume: bool, allow_pickle: bool = False
) -> TrainingState:
    """The model on `device`, its optimizer, schedule and checkpointer, and the iteration to
    start from: resumed from OUTPUT_DIR/last_checkpoint with `resume` (RNG state restored), else a
    fresh start from MODEL.WEIGHT when set (a warning when OUTPUT_DIR already holds a
    checkpoint, or when `resume` finds none: a scheduler that passes --resume to every attempt
    starts its first from MODEL.WEIGHT). `allow_pickle`: MODEL.WEIGHT may be a legacy pickle."""
    model = build_detector(cfg).to(device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(model, optimizer, scheduler, save_dir=cfg.OUTPUT_DIR, log=log)
    resumed = resume and checkpointer.has_checkpoint()
    if resume and not resumed:
        log.warning(
            "--resume: OUTPUT_DIR %s holds no last_checkpoint (a new or mistyped folder?): "
            "starting a new run%s",
            cfg.OUTPUT_DIR,
            f" from MODEL.WEIGHT {cfg.MODEL.WEIGHT}" if cfg.MODEL.WEIGHT else "",
        )
    elif not resume and checkpointer.has_checkpoint():
        log.warning(
            "%s already holds a checkpoint; starting from scratch anyway (pass "
            "--resume to continue it)",
            cfg.OUTPUT_DIR,
        )
    extra = checkpointer.resume() if resumed else {}
    if resumed:
        check_resumed_iteration(cfg, int(extra.get("iteration", 0)), checkpointer)
    elif cfg.MODEL.WEIGHT:
        checkpointer.load(
            cfg.MODEL.WEIGHT,
            allow_pickle=allow_pickle,
            load_training_state=False,
            reset_classifier=cfg.MODEL.RESET_CLASSIFIER,
            cfg=cfg,
        )
    if "rng" in extra:
        set_rng_state(extra["rng"])
    start_iter = int(extra.get("iteration", 0))
    weight_classes = None
    if not resumed and checkpointer.loaded_classes is not None and not cfg.MODEL.RESET_CLASSIFIER:
        weight_classes = (cfg.MODEL.WEIGHT, checkpointer.loaded_classes)
    return TrainingState(model, optimizer, scheduler, checkpointer, start_iter, weight_classes)


def check_resumed_iteration(cfg, iteration: int, checkpointer: Checkpointer) -> None:
    """A resumed checkpoint past SOLVER.MAX_ITER is a user error naming both."""
    if iteration > cfg.SOLVER.MAX_ITER:
        raise UserValueError(
            f"--resume: the last checkpoint of {cfg.OUTPUT_DIR} ({checkpointer.last_checkpoint()}"
            f") is at iteration {iteration}, beyond SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}: set "
            f"SOLVER.MAX_ITER to {iteration} or more, or use another OUTPUT_DIR"
        )


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when there are several processes, else itself."""
    if comm.get_world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        **no_forward_buffer_sync(),
    )


def no_forward_buffer_sync() -> dict[str, Any]:
    """DistributedDataParallel's keyword that stops the buffer broadcast before every forward:
    ``forward_sync_buffers`` where torch has it (2.13 and newer, where ``broadcast_buffers``
    warns on every rank that it is deprecated), else ``broadcast_buffers``. drdet's buffers
    (frozen BatchNorm statistics, constants) are equal on every rank, so the one sync at
    construction that ``forward_sync_buffers`` keeps changes nothing."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def train(
    cfg,
    device: torch.device,
    log: logging.Logger,
    resume: bool = False,
    allow_pickle: bool = False,
    hooks: Sequence[HookBase] = (),
) -> TrainingResult:
    """Trains to SOLVER.MAX_ITER, evaluating every TEST.EVAL_PERIOD; `hooks` run after the
    built-in ones. Writes OUTPUT_DIR/config.yaml once the model, weights and data are checked.
    SIGINT/SIGTERM end the run after the iteration with a checkpoint; a hook may
    end it early too. The parameters are checked to be identical on every rank at the end."""
    if comm.is_main_process():
        remove_stale_temporary_files(cfg.OUTPUT_DIR, log)
    late = [step for step in cfg.SOLVER.STEPS if step >= cfg.SOLVER.MAX_ITER]
    if late:
        log.warning(
            "SOLVER.STEPS %s: %s at or beyond SOLVER.MAX_ITER %d, so the learning rate never "
            "drops there",
            tuple(cfg.SOLVER.STEPS),
            ", ".join(map(str, late)),
            cfg.SOLVER.MAX_ITER,
        )
    state = build_for_training(cfg, device, log, resume, allow_pickle)
    model = state.model
    apply_speed_switches(cfg, model)  # SPEED.*: all off by default
    train_model = data_parallel(model, device)
    data_loader = build_data_loader(cfg, is_train=True, start_iter=state.start_iter)
    check_num_classes(cfg, data_loader.dataset, state.weight_classes)
    state.checkpointer.record["classes"] = classes_record(data_loader.dataset)
    write_config_record(cfg)  # the run's record, once the model, weights and data passed

    def evaluate(iteration):
        return evaluate_datasets(cfg, model, device, tag=f"iter_{iteration:07d}")

    with StopRequest() as stop:
        last = do_train(
            cfg,
            train_model,
            data_loader,
            state.optimizer,
            state.scheduler,
            state.checkpointer,
            device,
            start_iter=state.start_iter,
            evaluate=evaluate,
            should_stop=stop,
            hooks=hooks,
        )
    comm.check_replicas_identical(model)
    if comm.get_world_size() > 1:
        log.info("Parameters identical on all %d ranks", comm.get_world_size())
    return TrainingResult(model, last, stop.exit_status)


def final_evaluation(
    cfg, model: nn.Module, device: torch.device, iteration: int
) -> dict[str, dict[str, float]] | None:
    """Evaluates `model` on DATASETS.TEST (tag "final"), appends the metrics to
    OUTPUT_DIR/metrics.jsonl as the record of `iteration` and prints one line per dataset.
    Returns {dataset: metrics} on rank 0, None elsewhere."""
    results = evaluate_datasets(cfg, model, device, tag="final")
    if results:
        with JSONLinesWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.jsonl")) as metrics_file:
            metrics_file.write({"iteration": iteration, **eval_metrics_record(results)})
        for name, metrics in results.items():
            print(f"{name}: " + "  ".join(format_metric(k, v) for k, v in metrics.items()))
    return results

"""Periodic actions of the training loop, as hooks (the loop is drdet.engine.trainer.Trainer).

A hook subclasses HookBase and overrides any of before_train / after_step / after_train; the
trainer sets `hook.trainer` before training. A user-supplied hook is passed to the Trainer (or to
do_train, or to tools/train_net.py's main) with the others and needs no edit of the loop::

    class PrintLoss(HookBase):
        def after_step(self):
            print(self.trainer.iteration, self.trainer.values["loss"])

Within an iteration the hooks run in list order after the step; the built-in order is
LogMetrics, PeriodicCheckpoint, PeriodicEvaluation, StopOnSignal (see build_hooks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from drdet.utils.metric_logger import max_memory_mb

if TYPE_CHECKING:  # only for the annotations: hooks do not import the loop
    from drdet.engine.trainer import Trainer

logger = logging.getLogger("drdet.engine.trainer")

# Key of the unreadable-image count in the log records.
BAD_IMAGES = "bad_images"

EvaluateFn = Callable[[int], dict[str, dict[str, float]] | None]


def eval_metrics_record(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Evaluation results {dataset: {metric: value}} as the flat keys of a metrics.jsonl record
    (and TensorBoard): {"eval/<dataset>/<metric>": value}."""
    return {
        f"eval/{name}/{metric}": value
        for name, metrics in results.items()
        for metric, value in metrics.items()
    }


class HookBase:
    """A no-op hook. `trainer` (the running Trainer) is set before before_train. after_train
    runs however training ends (finished, stopped on request, or failed)."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class LogMetrics(HookBase):
    """Every `period` iterations, and at the last one: the smoothed losses, lr, time, data time,
    ETA and peak memory logged as one line and appended to OUTPUT_DIR/metrics.jsonl and
    TensorBoard (main process) as {"iteration": i, ...}, with the unreadable-image count
    ("bad_images") once the loaders skipped one."""

    def __init__(self, period: int):
        self.period = max(1, period)

    def after_step(self) -> None:
        t = self.trainer
        if t.iteration % self.period != 0 and t.iteration != t.max_iter:
            return
        line = t.meters.format(t.iteration, t.max_iter, max_memory_mb())
        record = {"iteration": t.iteration, **t.meters.latest()}
        if t.num_bad:
            line += f"  bad images: {t.num_bad}"
            record[BAD_IMAGES] = t.num_bad
        logger.info(line)
        if t.metrics_file is not None and t.tensorboard is not None:
            t.metrics_file.write(record)
            t.tensorboard.write(record, t.iteration)


class PeriodicCheckpoint(HookBase):
    """A checkpoint "model_<iteration:07d>" every `period` iterations (none when period <= 0)
    before the last one; the trainer writes "model_final" itself."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iteration % self.period == 0 and t.iteration < t.max_iter:
            t.save(f"model_{t.iteration:07d}")


class PeriodicEvaluation(HookBase):
    """`evaluate(iteration)` every `period` iterations (none when period <= 0) before the last one
    (the caller evaluates the final model). It returns {dataset: {metric: value}} (rank 0) or
    None; the values go to metrics.jsonl as "eval/<dataset>/<metric>". The model is put back in
    training mode afterwards."""

    def __init__(self, period: int, evaluate: EvaluateFn):
        self.period = period
        self.evaluate = evaluate

    def after_step(self) -> None:
        t = self.trainer
        if self.period <= 0 or t.iteration % self.period != 0 or t.iteration >= t.max_iter:
            return
        results = self.evaluate(t.iteration)
        if results and t.metrics_file is not None and t.tensorboard is not None:
            flat = eval_metrics_record(results)
            t.metrics_file.write({"iteration": t.iteration, **flat})
            t.tensorboard.write(flat, t.iteration)
        t.model.train()


class StopOnSignal(HookBase):
    """Ends the run early when `should_stop()` (e.g. drdet.utils.signals.StopRequest) says so
    after an iteration before the last: a checkpoint of that iteration is written and the trainer
    returns it."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def after_step(self) -> None:
        t = self.trainer
        if self.should_stop() and t.iteration < t.max_iter:
            logger.warning("Stopping at iteration %d on request; resume with --resume", t.iteration)
            t.save(f"model_{t.iteration:07d}")
            t.request_stop()


def build_hooks(
    cfg, evaluate: EvaluateFn | None = None, should_stop: Callable[[], bool] | None = None
) -> list[HookBase]:
    """The built-in hooks from the config, in their order: LogMetrics (SOLVER.LOG_PERIOD),
    PeriodicCheckpoint (SOLVER.CHECKPOINT_PERIOD), PeriodicEvaluation (TEST.EVAL_PERIOD, when
    `evaluate` is given), StopOnSignal (when `should_stop` is given)."""
    hooks: list[HookBase] = [
        LogMetrics(cfg.SOLVER.LOG_PERIOD),
        PeriodicCheckpoint(cfg.SOLVER.CHECKPOINT_PERIOD),
    ]
    if evaluate is not None:
        hooks.append(PeriodicEvaluation(cfg.TEST.EVAL_PERIOD, evaluate))
    if should_stop is not None:
        hooks.append(StopOnSignal(should_stop))
    return hooks

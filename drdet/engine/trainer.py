"""The iteration-based training loop: a TrainStep per batch, then the hooks.

Per iteration: the next batch -> TrainStep (forward, losses reduced over the ranks, checks,
backward, clipping, optimizer and scheduler step) -> the meters (time, data time, lr, losses)
-> every hook's after_step, in list order (by default: log line and metrics.jsonl every
SOLVER.LOG_PERIOD, checkpoint every SOLVER.CHECKPOINT_PERIOD, evaluation every TEST.EVAL_PERIOD,
stop on a signal). At the end "model_final" is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from drdet.checkpoint import Checkpointer, get_rng_state
from drdet.data.bad_images import TooManyBadImagesError
from drdet.engine.hooks import EvaluateFn, HookBase, build_hooks
from drdet.engine.train_step import NonFiniteLossError, TrainStep
from drdet.utils import comm
from drdet.utils.metric_logger import JSONLinesWriter, MetricLogger, TensorboardWriter

__all__ = ["NonFiniteLossError", "Trainer", "do_train"]

logger = logging.getLogger(__name__)


class Trainer:
    """Runs `step` on the batches of `data_loader` from `start_iter` (iterations done so far) to
    `max_iter`, calling the hooks around it.

    `data_loader` yields (images, targets, indices) batches, one per iteration, starting at
    `start_iter` (the sampler is resumable). Metrics go to `output_dir`/metrics.jsonl (appended to
    when resuming) and TensorBoard on the main process; `metrics_file` and `tensorboard` are None
    elsewhere. What hooks may read: iteration, start_iter, max_iter, model, meters, values (the
    step's last loss values), num_bad; and call: save(name), request_stop().
    """

    def __init__(
        self,
        step: TrainStep,
        data_loader: Iterable,
        checkpointer: Checkpointer,
        max_iter: int,
        output_dir: str,
        start_iter: int = 0,
        hooks: Sequence[HookBase] = (),
    ):
        self.step = step
        self.data_loader = data_loader
        self.checkpointer = checkpointer
        self.max_iter = max_iter
        self.output_dir = output_dir
        self.start_iter = start_iter
        self.iteration = start_iter
        self.hooks: list[HookBase] = list(hooks)
        self.meters = MetricLogger()
        self.values: dict[str, object] = {}
        self.num_bad = 0
        self.metrics_file: JSONLinesWriter | None = None
        self.tensorboard: TensorboardWriter | None = None
        self._stop = False

    @property
    def model(self) -> nn.Module:
        return self.step.model

    def save(self, name: str) -> None:
        """Writes checkpoint `name` of the current iteration (with the RNG state)."""
        self.checkpointer.save(name, iteration=self.iteration, rng=get_rng_state())

    def request_stop(self) -> None:
        """Ends training after the current iteration's hooks; train() returns that iteration."""
        self._stop = True

    def train(self) -> int:
        """Trains to `max_iter` (or until a hook requests a stop); returns the last iteration
        run. Every rank logs its rank and iteration when an error stops it."""
        if comm.is_main_process():
            self.metrics_file = JSONLinesWriter(
                f"{self.output_dir}/metrics.jsonl", append=self.start_iter > 0
            )
            self.tensorboard = TensorboardWriter(self.output_dir)
        for hook in self.hooks:
            hook.trainer = self
        logger.info("Start training from iteration %d to %d", self.start_iter, self.max_iter)
        self.model.train()
        start = time.perf_counter()
        try:
            for hook in self.hooks:
                hook.before_train()
            if self._run_loop():
                return self.iteration
            self.save("model_final")
        except BaseException as err:
            self._log_failure(err)
            raise
        finally:
            for hook in self.hooks:
                hook.after_train()
            if self.metrics_file is not None:
                self.metrics_file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        self._log_summary(time.perf_counter() - start)
        return self.iteration

    def _run_loop(self) -> bool:
        """The iterations; True when a hook requested a stop."""
        end = time.perf_counter()
        for images, targets, _ in self.data_loader:
            if self.iteration >= self.max_iter:
                break
            data_time = time.perf_counter() - end
            self.iteration += 1
            self.values, self.num_bad = self.step(self.iteration, images, targets)
            batch_time = time.perf_counter() - end
            end = time.perf_counter()
            self.meters.update(time=batch_time, data=data_time, lr=self.step.lr, **self.values)
            for hook in self.hooks:
                hook.after_step()
            if self._stop:
                return True
        if self.iteration < self.max_iter:
            raise RuntimeError(
                f"The data loader ended at iteration {self.iteration} < {self.max_iter}"
            )
        return False

    def _log_failure(self, err: BaseException) -> None:
        # Names rank and iteration in every rank's log: the errors of the ranks that a failed
        # one leaves behind (a peer gone, a collective timed out) say little more. The hint is
        # left out for the errors that stop every rank at once by design.
        world_size = comm.get_world_size()
        agreed = isinstance(err, (NonFiniteLossError, TooManyBadImagesError))
        logger.error(
            "Training stopped by %s at iteration %d on rank %d of %d%s",
            type(err).__name__,
            self.iteration,
            comm.get_rank(),
            world_size,
            "; when a peer closed the connection or a collective timed out "
            "(SOLVER.DIST_TIMEOUT_MINUTES), another rank failed or hung first: its "
            "log names the cause"
            if world_size > 1 and not agreed
            else "",
        )

    def _log_summary(self, seconds: float) -> None:
        bad_images = self.step.bad_images
        if self.num_bad and bad_images is not None:
            logger.warning(
                "%d unreadable images were skipped (over all ranks; DATALOADER."
                "MAX_BAD_IMAGES = %d); this rank's:\n%s",
                self.num_bad,
                bad_images.limit,
                bad_images.listing() or "  none",
            )
        done = self.iteration - self.start_iter
        logger.info(
            "Training: %d iterations in %.1f s (%.4f s / it)", done, seconds, seconds / max(1, done)
        )


def do_train(
    cfg,
    model: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    checkpointer: Checkpointer,
    device: torch.device,
    start_iter: int = 0,
    evaluate: EvaluateFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    hooks: Sequence[HookBase] = (),
) -> int:
    """Trains from `start_iter` to SOLVER.MAX_ITER: a Trainer with a TrainStep, the built-in
    hooks of `cfg` (drdet.engine.hooks.build_hooks, with `evaluate` and `should_stop`) and then
    `hooks`. Returns the last iteration run.

    `evaluate(iteration)` runs every TEST.EVAL_PERIOD iterations and returns {dataset: {metric:
    value}} (rank 0) or None. `should_stop()`, checked after every iteration, ends the run early
    with a checkpoint of that iteration. When `data_loader` has a `bad_images` log
    (drdet.data.build_data_loader's loaders), the unreadable images it skipped are summed over
    the ranks every iteration, logged once non-zero, and the run stops (TooManyBadImagesError) on
    every rank at once when they exceed DATALOADER.MAX_BAD_IMAGES.
    """
    step = TrainStep(
        cfg,
        model,
        optimizer,
        scheduler,
        device,
        bad_images=getattr(data_loader, "bad_images", None),
    )
    trainer = Trainer(
        step,
        data_loader,
        checkpointer,
        cfg.SOLVER.MAX_ITER,
        cfg.OUTPUT_DIR,
        start_iter=start_iter,
        hooks=build_hooks(cfg, evaluate, should_stop) + list(hooks),
    )
    return trainer.train()

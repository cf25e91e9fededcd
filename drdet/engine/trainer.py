"""The iteration-based training loop.

One iteration: a batch from the loader -> the detector's loss dict -> the losses (and the count of
unreadable images the loader skipped) summed over the ranks -> the bad-image limit and a finite
check -> backward (AMP on CUDA when SOLVER.AMP) -> optional gradient clipping (which also stops
the run on a non-finite gradient norm) -> SGD step -> LR schedule step.
Every SOLVER.LOG_PERIOD iterations the smoothed losses, lr, time, data time, ETA and peak memory are
logged and appended to OUTPUT_DIR/metrics.jsonl (with "bad_images" once the loader skipped one);
every SOLVER.CHECKPOINT_PERIOD iterations (and at the end) a checkpoint is written atomically;
every TEST.EVAL_PERIOD iterations `evaluate` runs.
"""
import logging
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from drdet.data.bad_images import BadImageLog, TooManyBadImagesError
from drdet.solver import make_gradient_clipper
from drdet.utils import comm
from drdet.checkpoint import Checkpointer, get_rng_state
from drdet.utils.metric_logger import JSONLinesWriter, MetricLogger, TensorboardWriter, max_memory_mb

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration, term and images."""


def move_batch(images: Sequence[Tensor], targets: Sequence[Dict], device: torch.device):
    """Images and the tensors of the target dicts moved to `device` (non-blocking)."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _image_ids(targets: Sequence[Dict]) -> List:
    return [int(t["image_id"]) if "image_id" in t else None for t in targets]


def check_finite(iteration: int, reduced: Dict[str, float], local: Dict[str, Tensor],
                 targets: Sequence[Dict]) -> None:
    """Raises NonFiniteLossError when any loss term, averaged over the ranks, is not finite.

    Every rank sees the same reduced values, so every rank stops at the same iteration (no rank is
    left waiting in a collective); each names the images of its own batch."""
    bad = [k for k, v in reduced.items() if not math.isfinite(v)]
    if not bad:
        return
    local_bad = {k: float(v.detach()) for k, v in local.items()
                 if not math.isfinite(float(v.detach()))}
    raise NonFiniteLossError(
        f"Non-finite loss at iteration {iteration}: "
        + ", ".join(f"{k} = {reduced[k]}" for k in bad)
        + f" (this rank's terms: {local_bad or 'all finite'}; rank {comm.get_rank()} images "
        f"{_image_ids(targets)}). Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable "
        "SOLVER.CLIP_GRADIENTS; resume from the last checkpoint with --resume."
    )


# Key of the unreadable-image count in the dict reduced over the ranks with the losses.
_BAD_IMAGES = "bad_images"


def check_bad_images(iteration: int, total: int, bad_images: Optional[BadImageLog]) -> None:
    """Raises TooManyBadImagesError when `total`, the unreadable images met by the loaders of
    all ranks, exceeds DATALOADER.MAX_BAD_IMAGES. Every rank sees the same total, so every rank
    stops at the same iteration; each lists the files its own loader met."""
    if bad_images is None or not bad_images.over_limit(total):
        return
    world_size = comm.get_world_size()
    note = f" (rank {comm.get_rank()} of {world_size})" if world_size > 1 else ""
    raise bad_images.limit_error(total, iteration, note)


def do_train(
    cfg,
    model: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    checkpointer: Checkpointer,
    device: torch.device,
    start_iter: int = 0,
    evaluate: Optional[Callable[[int], Optional[Dict[str, Dict[str, float]]]]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> int:
    """Trains from `start_iter` (iterations done so far) to SOLVER.MAX_ITER.

    `data_loader` yields (images, targets, indices) batches, one per iteration, starting at
    `start_iter` (the sampler is resumable). `evaluate(iteration)` is called every
    TEST.EVAL_PERIOD iterations (not at the end: the caller evaluates the final model) and
    returns {dataset: {metric: value}} (rank 0) or None; the values go to metrics.jsonl as
    "eval/<dataset>/<metric>".
    `should_stop()`, checked after every iteration, lets a signal handler end the run early: a
    checkpoint of the current iteration is then written and the iteration returned.
    When `data_loader` has a `bad_images` log (drdet.data.build_data_loader's loaders), the
    number of unreadable images it skipped is summed over the ranks every iteration, logged and
    recorded once non-zero, and the run stops (TooManyBadImagesError) on every rank at once when
    it exceeds DATALOADER.MAX_BAD_IMAGES.
    Returns the last iteration run.
    """
    max_iter = cfg.SOLVER.MAX_ITER
    log_period = max(1, cfg.SOLVER.LOG_PERIOD)
    ckpt_period = cfg.SOLVER.CHECKPOINT_PERIOD
    eval_period = cfg.TEST.EVAL_PERIOD
    use_amp = bool(cfg.SOLVER.AMP) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    clip_gradients = make_gradient_clipper(cfg)
    meters = MetricLogger()
    metrics_file = (JSONLinesWriter(f"{cfg.OUTPUT_DIR}/metrics.jsonl", append=start_iter > 0)
                    if comm.is_main_process() else None)
    tensorboard = TensorboardWriter(cfg.OUTPUT_DIR) if comm.is_main_process() else None

    bad_images: Optional[BadImageLog] = getattr(data_loader, "bad_images", None)
    if bad_images is not None:
        bad_images.raise_over_limit = False  # applied below to the sum over all ranks
    num_bad = 0

    def save(name: str, iteration: int) -> None:
        checkpointer.save(name, iteration=iteration, rng=get_rng_state())

    logger.info("Start training from iteration %d to %d", start_iter, max_iter)
    model.train()
    iteration = start_iter
    start = end = time.perf_counter()
    try:
        for images, targets, _ in data_loader:
            if iteration >= max_iter:
                break
            data_time = time.perf_counter() - end
            iteration += 1
            images, targets = move_batch(images, targets, device)

            with torch.autocast(device.type, enabled=use_amp):
                loss_dict = model(images, targets)
            losses = sum(loss_dict.values())
            to_reduce = {k: v.detach().float() for k, v in loss_dict.items()}
            if bad_images is not None:
                to_reduce[_BAD_IMAGES] = torch.tensor(float(bad_images.count), device=losses.device)
            reduced = comm.reduce_dict(to_reduce)
            reduced = {k: float(v) for k, v in reduced.items()}  # the one host sync of the step
            if bad_images is not None:  # the mean over the ranks back to their sum
                num_bad = round(reduced.pop(_BAD_IMAGES) * comm.get_world_size())
                check_bad_images(iteration, num_bad, bad_images)
            check_finite(iteration, reduced, loss_dict, targets)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses).backward()
            values = dict(reduced, loss=sum(reduced.values()))
            if clip_gradients is not None:
                scaler.unscale_(optimizer)
                grad_norm = clip_gradients(model)
                if not use_amp and not torch.isfinite(grad_norm):
                    # (under AMP the scaler skips such steps and lowers its scale itself)
                    raise NonFiniteLossError(
                        f"Non-finite gradient norm ({float(grad_norm)}) at iteration {iteration} "
                        f"with finite losses {reduced}; rank {comm.get_rank()} images "
                        f"{_image_ids(targets)}. The step was not applied.")
                values["grad_norm"] = grad_norm
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            batch_time = time.perf_counter() - end
            end = time.perf_counter()
            meters.update(time=batch_time, data=data_time, lr=optimizer.param_groups[0]["lr"],
                          **values)
            if iteration % log_period == 0 or iteration == max_iter:
                line = meters.format(iteration, max_iter, max_memory_mb())
                record = {"iteration": iteration, **meters.latest()}
                if num_bad:
                    line += f"  bad images: {num_bad}"
                    record[_BAD_IMAGES] = num_bad
                logger.info(line)
                if metrics_file is not None:
                    metrics_file.write(record)
                    tensorboard.write(record, iteration)
            if ckpt_period > 0 and iteration % ckpt_period == 0 and iteration < max_iter:
                save(f"model_{iteration:07d}", iteration)
            if evaluate is not None and eval_period > 0 and iteration % eval_period == 0 \
                    and iteration < max_iter:
                results = evaluate(iteration)
                if results and metrics_file is not None:
                    flat = {f"eval/{name}/{k}": v for name, metrics in results.items()
                            for k, v in metrics.items()}
                    metrics_file.write({"iteration": iteration, **flat})
                    tensorboard.write(flat, iteration)
                model.train()
            if should_stop is not None and should_stop() and iteration < max_iter:
                logger.warning("Stopping at iteration %d on request; resume with --resume", iteration)
                save(f"model_{iteration:07d}", iteration)
                return iteration
        if iteration < max_iter:
            raise RuntimeError(f"The data loader ended at iteration {iteration} < {max_iter}")
        save("model_final", iteration)
    except BaseException as err:
        # Names rank and iteration in every rank's log: the errors of the ranks that a failed
        # one leaves behind (a peer gone, a collective timed out) say little more. The hint is
        # left out for the errors that stop every rank at once by design.
        world_size = comm.get_world_size()
        agreed = isinstance(err, (NonFiniteLossError, TooManyBadImagesError))
        logger.error("Training stopped by %s at iteration %d on rank %d of %d%s",
                     type(err).__name__, iteration, comm.get_rank(), world_size,
                     "; when a peer closed the connection or a collective timed out "
                     "(SOLVER.DIST_TIMEOUT_MINUTES), another rank failed or hung first: its "
                     "log names the cause" if world_size > 1 and not agreed else "")
        raise
    finally:
        if metrics_file is not None:
            metrics_file.close()
            tensorboard.close()
    if num_bad:
        logger.warning("%d unreadable images were skipped (over all ranks; DATALOADER."
                       "MAX_BAD_IMAGES = %d); this rank's:\n%s", num_bad, bad_images.limit,
                       bad_images.listing() or "  none")
    total = time.perf_counter() - start
    logger.info("Training: %d iterations in %.1f s (%.4f s / it)", iteration - start_iter, total,
                total / max(1, iteration - start_iter))
    return iteration

"""One training iteration (TrainStep), and the checks that can stop it.

A batch -> the detector's loss dict -> the losses (and the count of unreadable images the loader
skipped) summed over the ranks -> the bad-image limit and a finite check -> backward (AMP on CUDA
when SOLVER.AMP) -> optional gradient clipping (which also stops the run on a non-finite gradient
norm) -> SGD step -> LR schedule step. The loop around it is drdet.engine.trainer.Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from drdet.checkpoint import unwrap_model
from drdet.data.bad_images import BadImageLog
from drdet.engine.speed import amp_dtype
from drdet.modeling.dense import DenseDetector
from drdet.solver import make_gradient_clipper
from drdet.utils import comm


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration, term and images."""


def move_batch(images: Sequence[Tensor], targets: Sequence[dict], device: torch.device):
    """Images and the tensors of the target dicts moved to `device` (non-blocking)."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _image_ids(targets: Sequence[dict]) -> list:
    return [int(t["image_id"]) if "image_id" in t else None for t in targets]


def check_finite(
    iteration: int, reduced: dict[str, float], local: dict[str, Tensor], targets: Sequence[dict]
) -> None:
    """Raises NonFiniteLossError when any loss term, averaged over the ranks, is not finite.

    Every rank sees the same reduced values, so every rank stops at the same iteration (no rank is
    left waiting in a collective); each names the images of its own batch."""
    bad = [k for k, v in reduced.items() if not math.isfinite(v)]
    if not bad:
        return
    local_bad = {
        k: float(v.detach()) for k, v in local.items() if not math.isfinite(float(v.detach()))
    }
    raise NonFiniteLossError(
        f"Non-finite loss at iteration {iteration}: "
        + ", ".join(f"{k} = {reduced[k]}" for k in bad)
        + f" (this rank's terms: {local_bad or 'all finite'}; rank {comm.get_rank()} images "
        f"{_image_ids(targets)}). Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable "
        "SOLVER.CLIP_GRADIENTS, then train again (with --resume once OUTPUT_DIR holds a "
        "checkpoint from before the problem; the first is written at SOLVER.CHECKPOINT_PERIOD)."
    )


# Key of the unreadable-image count in the dict reduced over the ranks with the losses.
_BAD_IMAGES = "bad_images"


def check_bad_images(iteration: int, total: int, bad_images: BadImageLog | None) -> None:
    """Raises TooManyBadImagesError when `total`, the unreadable images met by the loaders of
    all ranks, exceeds DATALOADER.MAX_BAD_IMAGES. Every rank sees the same total, so every rank
    stops at the same iteration; each lists the files its own loader met."""
    if bad_images is None or not bad_images.over_limit(total):
        return
    world_size = comm.get_world_size()
    note = f" (rank {comm.get_rank()} of {world_size})" if world_size > 1 else ""
    raise bad_images.limit_error(total, iteration, note)


class _PendingChecks:
    """The device-side values of the iterations whose checks SPEED.DEFER_CHECKS postponed:
    per iteration the loss terms reduced over the ranks, this rank's terms, the bad-image count
    (summed over the ranks) and the gradient norm when it is checked, kept as device tensors
    until :meth:`read` copies them all to the host at once."""

    def __init__(self):
        self.rows: list[tuple[int, list[int | None], Tensor]] = []

    def add(self, iteration: int, image_ids: list, values: Sequence[Tensor]) -> None:
        self.rows.append((iteration, image_ids, torch.stack([v.reshape(()) for v in values])))

    def read(self) -> list[tuple[int, list, list[float]]]:
        """(iteration, image ids, values as floats) per pending iteration; one host sync."""
        if not self.rows:
            return []
        host = torch.stack([r[2] for r in self.rows]).cpu().tolist()
        rows = [(it, ids, vals) for (it, ids, _), vals in zip(self.rows, host)]
        self.rows = []
        return rows


class TrainStep:
    """One training iteration of `model` on one batch: forward (under autocast when SOLVER.AMP
    on CUDA, in SPEED.AMP_DTYPE), the loss terms and the bad-image count reduced over the ranks,
    the bad-image limit and finite checks, backward, optional clipping, optimizer and scheduler
    step.

    Host syncs. A dense detector's targets, when they come on the CPU (from a data loader), are
    checked there before they move to the device (``DenseDetector.check_targets``: the same
    error, naming the image, without a device sync), and the detector is called with
    ``check_targets=False``, so that its loss skips its device-side check.
    What the step reads back from the device:

    - by default, every iteration, the reduced loss terms and bad-image count, in one copy (the
      finite check and the bad-image limit need them before the update), and with clipping
      without AMP the gradient norm (``torch.isfinite``);
    - with SPEED.DEFER_CHECKS, nothing at most iterations: these values stay on the device and
      are read back, in one copy, every SOLVER.LOG_PERIOD iterations and at the checkpoint,
      evaluation and last iterations (:meth:`flush`). The checks then run on every pending
      iteration in order, and the first failure stops the run naming its iteration, images and
      terms, as before, but after the updates of the iterations in between. Periodic
      checkpoints come at flush iterations, after the checks passed, so none holds such an
      update; a checkpoint written between flushes (a stop on a signal) may. The values
      returned are the means over the flushed iterations, and empty in between.

    What remains on a GPU is in the model: the positive anchors' ``nonzero()`` in the RetinaNet
    loss (its size decides the regression loss's shape) and whatever the classification loss
    reads back; tests/test_sync_free_step.py counts them.

    When `bad_images` (the loader's BadImageLog) is given, its own limit check is switched off:
    the limit applies here, to the sum over all ranks, so that every rank stops at once.
    """

    def __init__(
        self,
        cfg,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        device: torch.device,
        bad_images: BadImageLog | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.use_amp = bool(cfg.SOLVER.AMP) and device.type == "cuda"
        self.amp_dtype = amp_dtype(cfg.SPEED.AMP_DTYPE, device)
        # bfloat16 has float32's range: no loss scaling needed.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16
        )
        self.clip_gradients = make_gradient_clipper(cfg)
        # The dense detectors check their targets on the host (skipped for targets already on
        # the device); other detectors check their own.
        self.dense = isinstance(unwrap_model(model), DenseDetector)
        self.defer_checks = bool(cfg.SPEED.DEFER_CHECKS)
        periods = (cfg.SOLVER.LOG_PERIOD, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD)
        self.flush_periods = tuple(p for p in periods if p > 0)
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.pending = _PendingChecks()
        self._keys: list[str] = []
        self.bad_images = bad_images
        if bad_images is not None:
            bad_images.raise_over_limit = False  # applied in __call__ to the sum over all ranks

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (after the last scheduler step)."""
        return self.optimizer.param_groups[0]["lr"]

    def _forward(self, images: Sequence[Tensor], targets: Sequence[dict]) -> dict[str, Tensor]:
        """The loss dict, with the targets checked on the host when they are there."""
        on_host = (
            self.dense
            and bool(targets)
            and all(
                isinstance(t.get(k), Tensor) and t[k].device.type == "cpu"
                for t in targets
                for k in ("boxes", "labels")
            )
        )
        if on_host:
            cast(DenseDetector, unwrap_model(self.model)).check_targets(targets)
        images, targets = move_batch(images, targets, self.device)
        kwargs = {"check_targets": False} if on_host else {}
        with torch.autocast(self.device.type, enabled=self.use_amp, dtype=self.amp_dtype):
            return self.model(images, targets, **kwargs)

    def __call__(
        self, iteration: int, images: Sequence[Tensor], targets: Sequence[dict]
    ) -> tuple[dict[str, object], int]:
        """Runs iteration `iteration` (1-based) on one batch: `images` (3, H_i, W_i) tensors and
        their target dicts, on any device. Returns (values, num_bad): the loss terms averaged over
        the ranks as floats, their sum as "loss" and, when clipping, "grad_norm" (a 0-dim
        tensor); and the unreadable images skipped so far by the loaders of all ranks (0 without
        a bad-image log). With SPEED.DEFER_CHECKS see the class docstring."""
        loss_dict = self._forward(images, targets)
        losses = cast(Tensor, sum(loss_dict.values()))
        to_reduce = {k: v.detach().float() for k, v in loss_dict.items()}
        bad_images = self.bad_images
        if bad_images is not None:  # a fill, not a host-to-device copy
            to_reduce[_BAD_IMAGES] = torch.full((), float(bad_images.count), device=losses.device)
        reduced_t = comm.reduce_dict(to_reduce)
        if self.defer_checks:
            return self._deferred(iteration, targets, loss_dict, reduced_t, losses)

        keys = list(reduced_t)  # the one host read of the step: all values in one copy
        reduced = dict(
            zip(keys, torch.stack([reduced_t[k].reshape(()) for k in keys]).cpu().tolist())
        )
        num_bad = self._check(iteration, reduced, loss_dict, targets)
        grad_norm = self._update(losses)
        values: dict[str, object] = dict(reduced, loss=sum(reduced.values()))
        if grad_norm is not None:
            if not self.use_amp and not torch.isfinite(grad_norm):
                # (under AMP the scaler skips such steps and lowers its scale itself)
                raise NonFiniteLossError(
                    f"Non-finite gradient norm ({float(grad_norm)}) at iteration {iteration} "
                    f"with finite losses {reduced}; rank {comm.get_rank()} images "
                    f"{_image_ids(targets)}. The step was not applied."
                )
            values["grad_norm"] = grad_norm
        self._apply()
        return values, num_bad

    def _check(
        self,
        iteration: int,
        reduced: dict[str, float],
        local: dict[str, Tensor],
        targets: Sequence[dict],
    ) -> int:
        """The bad-image limit and the finite check on host values; pops and returns the
        bad-image total over the ranks (0 without a log)."""
        num_bad = 0
        if self.bad_images is not None:  # the mean over the ranks back to their sum
            num_bad = round(reduced.pop(_BAD_IMAGES) * comm.get_world_size())
            check_bad_images(iteration, num_bad, self.bad_images)
        check_finite(iteration, reduced, local, targets)
        return num_bad

    def _update(self, losses: Tensor) -> Tensor | None:
        """Backward and clipping (returns the gradient norm, or None without clipping)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses).backward()
        if self.clip_gradients is None:
            return None
        self.scaler.unscale_(self.optimizer)
        return self.clip_gradients(self.model)

    def _apply(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _deferred(
        self,
        iteration: int,
        targets: Sequence[dict],
        loss_dict: dict[str, Tensor],
        reduced: dict[str, Tensor],
        losses: Tensor,
    ) -> tuple[dict[str, object], int]:
        """The step of SPEED.DEFER_CHECKS: the values to check are kept on the device, and read
        back and checked at the flush iterations (class docstring)."""
        grad_norm = self._update(losses)
        check_grad = grad_norm is not None and not self.use_amp
        self._keys = list(reduced)
        values = [*reduced.values(), *(v.detach().float() for v in loss_dict.values())]
        if check_grad and grad_norm is not None:
            values.append(grad_norm.detach().float())
        self.pending.add(iteration, _image_ids(targets), values)
        self._apply()
        if iteration != self.max_iter and not any(iteration % p == 0 for p in self.flush_periods):
            return {}, 0
        return self.flush(list(loss_dict), check_grad)

    def flush(self, local_keys: Sequence[str], check_grad: bool) -> tuple[dict[str, object], int]:
        """Reads back the pending iterations (one host sync) and runs their checks in order;
        returns (the means of the loss terms over them, the last bad-image total)."""
        rows = self.pending.read()
        num_bad, sums = 0, dict.fromkeys([k for k in self._keys if k != _BAD_IMAGES], 0.0)
        n_reduced = len(self._keys)
        for iteration, image_ids, vals in rows:
            reduced = dict(zip(self._keys, vals[:n_reduced]))
            local = {k: torch.tensor(v) for k, v in zip(local_keys, vals[n_reduced:])}
            batch = [{} if i is None else {"image_id": i} for i in image_ids]
            num_bad = self._check(iteration, reduced, local, batch)
            if check_grad and not math.isfinite(vals[-1]):
                raise NonFiniteLossError(
                    f"Non-finite gradient norm ({vals[-1]}) at iteration {iteration} with finite "
                    f"losses {reduced}; rank {comm.get_rank()} images {image_ids}. "
                    "SPEED.DEFER_CHECKS: the step and those up to this check were applied."
                )
            for k in sums:
                sums[k] += reduced[k]
        mean = {k: v / max(1, len(rows)) for k, v in sums.items()}
        means: dict[str, object] = dict(mean, loss=sum(mean.values()))
        if check_grad and rows:
            means["grad_norm"] = rows[-1][2][-1]
        return means, num_bad

"""One training iteration (TrainStep), and the checks that can stop it.

A batch -> the detector's loss dict -> the losses (and the count of unreadable images the loader
skipped) summed over the ranks -> the bad-image limit and a finite check -> backward (AMP on CUDA
when SOLVER.AMP) -> optional gradient clipping (which also stops the run on a non-finite gradient
norm) -> SGD step -> LR schedule step. The loop around it is drdet.engine.trainer.Trainer.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from drdet.data.bad_images import BadImageLog
from drdet.solver import make_gradient_clipper
from drdet.utils import comm


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




class TrainStep:
    """One training iteration of `model` on one batch: forward (under autocast when SOLVER.AMP
    on CUDA), the loss terms and the bad-image count reduced over the ranks (the one host sync),
    the bad-image limit and finite checks, backward, optional clipping, optimizer and scheduler
    step.

    When `bad_images` (the loader's BadImageLog) is given, its own limit check is switched off:
    the limit applies here, to the sum over all ranks, so that every rank stops at once.
    """

    def __init__(self, cfg, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 device: torch.device, bad_images: Optional[BadImageLog] = None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.use_amp = bool(cfg.SOLVER.AMP) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.clip_gradients = make_gradient_clipper(cfg)
        self.bad_images = bad_images
        if bad_images is not None:
            bad_images.raise_over_limit = False  # applied in __call__ to the sum over all ranks

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (after the last scheduler step)."""
        return self.optimizer.param_groups[0]["lr"]

    def __call__(self, iteration: int, images: Sequence[Tensor], targets: Sequence[Dict]
                 ) -> Tuple[Dict[str, object], int]:
        """Runs iteration `iteration` (1-based) on one batch: `images` (3, H_i, W_i) tensors and
        their target dicts, on any device. Returns (values, num_bad): the loss terms averaged over
        the ranks as floats, their sum as "loss" and, when clipping, "grad_norm" (a 0-dim
        tensor); and the unreadable images skipped so far by the loaders of all ranks (0 without
        a bad-image log)."""
        images, targets = move_batch(images, targets, self.device)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss_dict = self.model(images, targets)
        losses = sum(loss_dict.values())
        to_reduce = {k: v.detach().float() for k, v in loss_dict.items()}
        bad_images = self.bad_images
        if bad_images is not None:
            to_reduce[_BAD_IMAGES] = torch.tensor(float(bad_images.count), device=losses.device)
        reduced = comm.reduce_dict(to_reduce)
        reduced = {k: float(v) for k, v in reduced.items()}  # the one host sync of the step
        num_bad = 0
        if bad_images is not None:  # the mean over the ranks back to their sum
            num_bad = round(reduced.pop(_BAD_IMAGES) * comm.get_world_size())
            check_bad_images(iteration, num_bad, bad_images)
        check_finite(iteration, reduced, loss_dict, targets)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses).backward()
        values: Dict[str, object] = dict(reduced, loss=sum(reduced.values()))
        if self.clip_gradients is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = self.clip_gradients(self.model)
            if not self.use_amp and not torch.isfinite(grad_norm):
                # (under AMP the scaler skips such steps and lowers its scale itself)
                raise NonFiniteLossError(
                    f"Non-finite gradient norm ({float(grad_norm)}) at iteration {iteration} "
                    f"with finite losses {reduced}; rank {comm.get_rank()} images "
                    f"{_image_ids(targets)}. The step was not applied.")
            values["grad_norm"] = grad_norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values, num_bad

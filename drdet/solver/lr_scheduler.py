"""Iteration-based learning-rate schedules with warmup.

The lr at iteration t (0-based, the number of scheduler.step() calls so far) is
    base_lr * warmup(t) * decay(t)
where warmup(t) is, for t < warmup_iters, `warmup_factor` ("constant") or
warmup_factor * (1 - t / warmup_iters) + t / warmup_iters ("linear"), and 1 afterwards;
decay(t) is gamma ** (number of milestones <= t) for the multi-step schedule and
(1 + cos(pi * t / max_iters)) / 2 for the cosine one (0 from max_iters on).
Both schedulers are torch LRScheduler subclasses: state_dict()/load_state_dict() restore them.
"""

import bisect
import math

import torch
from torch.optim.lr_scheduler import LRScheduler

# SOLVER.WARMUP_METHOD
WARMUP_METHODS = ("constant", "linear")


def warmup_multiplier(
    method: str, iteration: int, warmup_iters: int, warmup_factor: float
) -> float:
    """Multiplier of the lr during warmup at `iteration`; 1.0 once iteration >= warmup_iters."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}, got {method!r}")


class _WarmupLR(LRScheduler):
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_factor: float,
        warmup_iters: int,
        warmup_method: str,
        last_epoch: int = -1,
    ):
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {WARMUP_METHODS}, got {warmup_method!r}"
            )
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _decay(self, iteration: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]  # (floats, never tensors)
        t = self.last_epoch
        factor = warmup_multiplier(self.warmup_method, t, self.warmup_iters, self.warmup_factor)
        factor *= self._decay(t)
        return [float(base_lr) * factor for base_lr in self.base_lrs]

    # The closed form is exact at every iteration, so chainable and closed form are the same.
    _get_closed_form_lr = get_lr


class WarmupMultiStepLR(_WarmupLR):
    """Warmup, then lr * gamma ** k after the k-th milestone (iterations, strictly increasing)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: list[int],
        gamma: float = 0.1,
        warmup_factor: float = 1.0 / 3,
        warmup_iters: int = 500,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing integers, got {milestones}")
        self.milestones = milestones
        self.gamma = float(gamma)
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def _decay(self, iteration: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, iteration)


class WarmupCosineLR(_WarmupLR):
    """Warmup, then half a cosine from the base lr at iteration 0 to 0 at `max_iters`."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 1.0 / 3,
        warmup_iters: int = 500,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        if max_iters <= 0:
            raise ValueError(f"max_iters must be > 0, got {max_iters}")
        self.max_iters = int(max_iters)
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def _decay(self, iteration: int) -> float:
        if iteration >= self.max_iters:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * iteration / self.max_iters))

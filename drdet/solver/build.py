"""Build the SGD optimizer and the learning-rate schedule from the config."""

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from drdet.config import register_config_check
from drdet.utils.checks import require

from .lr_scheduler import WARMUP_METHODS, WarmupCosineLR, WarmupMultiStepLR

# SOLVER.LR_SCHEDULER
LR_SCHEDULERS = ("multistep", "cosine")

# Norm layers whose affine parameters count as "norm" parameters for weight decay.
_NORM_TYPES: tuple[type, ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float = 0.0,
    weight_decay_norm: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of `model` into SGD parameter groups.

    - bias parameters (name ending in "bias", norm biases included): lr = base_lr * bias_lr_factor,
      weight decay `weight_decay_bias` (maskrcnn-benchmark's rule);
    - weights of norm layers (BN/GN/LN...): weight decay `weight_decay_norm`, which defaults to
      `weight_decay` as in maskrcnn-benchmark;
    - every other parameter: lr = base_lr, weight decay `weight_decay`.
    Frozen parameters (requires_grad False) are left out; each parameter appears once even when
    modules share it. Groups that would be empty are not returned. Each group carries a "name"
    ("weight", "norm" or "bias") and an "initial_lr" set to its own base lr.
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if weight_decay_norm is None:
        weight_decay_norm = weight_decay
    buckets: dict[str, list[nn.Parameter]] = {"weight": [], "norm": [], "bias": []}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if name.endswith("bias"):
                buckets["bias"].append(p)
            elif isinstance(module, _NORM_TYPES):
                buckets["norm"].append(p)
            else:
                buckets["weight"].append(p)
    settings = {
        "weight": (base_lr, weight_decay),
        "norm": (base_lr, weight_decay_norm),
        "bias": (base_lr * bias_lr_factor, weight_decay_bias),
    }
    groups = []
    for key, params in buckets.items():
        if params:
            lr, wd = settings[key]
            groups.append(
                {"name": key, "params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd}
            )
    return groups


def make_optimizer(cfg, model: nn.Module) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters of `model`, grouped by `param_groups`.

    Config keys: SOLVER.BASE_LR, MOMENTUM, WEIGHT_DECAY, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS and
    (drdet) SOLVER.WEIGHT_DECAY_NORM (negative = same as WEIGHT_DECAY).

    Learning rate and batch size: the paper trains with lr 0.01 for a mini-batch of 16 images
    (8 GPUs x 2 images, 90k iterations for "1x"), and its Remark 2 (Theorem 1: eta = O(sqrt(m/T)))
    says that dividing the batch by alpha while multiplying the iterations by alpha (same number of
    epochs) needs the learning rate divided by alpha: scale SOLVER.BASE_LR linearly with
    SOLVER.IMS_PER_BATCH (e.g. 0.005 for 8 images, with MAX_ITER and STEPS doubled), as in Goyal et
    al. The rule stops holding for very large batches (the lr must stay below 1/mu). This builder
    does not rescale anything itself: the config states the lr it wants.
    """
    s = cfg.SOLVER
    groups = param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        weight_decay_norm=None if s.WEIGHT_DECAY_NORM < 0 else s.WEIGHT_DECAY_NORM,
    )
    if not groups:
        raise ValueError("make_optimizer: the model has no trainable parameter")
    return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM)


def make_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """The iteration-based schedule named by SOLVER.LR_SCHEDULER ("multistep" | "cosine").

    Both warm up over SOLVER.WARMUP_ITERS iterations (WARMUP_METHOD "linear" | "constant",
    starting at WARMUP_FACTOR); "multistep" then multiplies the lr by GAMMA at each of STEPS,
    "cosine" decays it to 0 at MAX_ITER. Call scheduler.step() once after every iteration.
    """
    s = cfg.SOLVER
    name = s.LR_SCHEDULER
    common = dict(
        warmup_factor=s.WARMUP_FACTOR, warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD
    )
    if name == "multistep":
        return WarmupMultiStepLR(optimizer, milestones=list(s.STEPS), gamma=s.GAMMA, **common)
    if name == "cosine":
        return WarmupCosineLR(optimizer, max_iters=s.MAX_ITER, **common)
    raise ValueError(f"SOLVER.LR_SCHEDULER must be one of {LR_SCHEDULERS}, got {name!r}")


def trainable_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The parameters of `model` that require a gradient (for gradient clipping)."""
    return (p for p in model.parameters() if p.requires_grad)


def make_gradient_clipper(cfg) -> Callable[[nn.Module], torch.Tensor] | None:
    """A function model -> total gradient norm (before clipping, a 0-dim tensor) that clips the
    global L2 norm of the trainable gradients to SOLVER.CLIP_GRADIENTS.MAX_NORM; None when
    SOLVER.CLIP_GRADIENTS.ENABLED is False. Call it between backward() and step()
    (after scaler.unscale_(optimizer) under AMP). A non-finite norm is returned as is, so the
    caller can skip the step and report it."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    max_norm = float(clip.MAX_NORM)
    if max_norm <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.MAX_NORM must be > 0, got {max_norm}")

    def clip_gradients(model: nn.Module) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(list(trainable_parameters(model)), max_norm)

    return clip_gradients


def check_solver_cfg(cfg) -> None:
    """ValueError naming the SOLVER key that the optimizer and schedule cannot use."""
    s = cfg.SOLVER
    require(s.BASE_LR > 0.0, "SOLVER.BASE_LR", s.BASE_LR, "must be > 0")
    require(s.IMS_PER_BATCH >= 1, "SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH, "must be >= 1")
    require(list(s.STEPS) == sorted(s.STEPS), "SOLVER.STEPS", s.STEPS, "must be increasing")
    require(s.MAX_ITER >= 1, "SOLVER.MAX_ITER", s.MAX_ITER, "must be >= 1")
    require(
        s.DIST_TIMEOUT_MINUTES > 0,
        "SOLVER.DIST_TIMEOUT_MINUTES",
        s.DIST_TIMEOUT_MINUTES,
        "must be > 0 (minutes, fractions allowed)",
    )
    for key, allowed in (("WARMUP_METHOD", WARMUP_METHODS), ("LR_SCHEDULER", LR_SCHEDULERS)):
        require(s[key] in allowed, f"SOLVER.{key}", s[key], f"must be one of {list(allowed)}")


register_config_check("SOLVER", check_solver_cfg)

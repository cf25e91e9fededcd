"""Optimizer and learning-rate schedule."""

from .build import (
    make_gradient_clipper,
    make_lr_scheduler,
    make_optimizer,
    param_groups,
    trainable_parameters,
)
from .lr_scheduler import WarmupCosineLR, WarmupMultiStepLR, warmup_multiplier

__all__ = [
    "make_optimizer",
    "make_gradient_clipper",
    "make_lr_scheduler",
    "param_groups",
    "trainable_parameters",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "warmup_multiplier",
]

"""The speed switches of cfg.SPEED applied to a model before training (see
drdet/config/defaults.py): channels_last, torch.compile, cudnn.benchmark and the autocast dtype.
None of them changes the state dict's keys or values, so checkpoints load with any of them."""

from __future__ import annotations

import torch
from torch import nn

from drdet.config import register_config_check
from drdet.utils.checks import require

# SPEED.AMP_DTYPE: the autocast dtypes amp_dtype maps to a torch dtype.
AMP_DTYPES = ("float16", "bfloat16", "auto")

__all__ = ["amp_dtype", "apply_speed_switches", "to_channels_last"]


def amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of SPEED.AMP_DTYPE ("float16", "bfloat16" or "auto": bfloat16 where
    the CUDA device supports it, else float16)."""
    if name not in AMP_DTYPES:
        raise ValueError(f"SPEED.AMP_DTYPE = {name!r}: must be one of {list(AMP_DTYPES)}")
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    return torch.bfloat16 if name == "bfloat16" else torch.float16


def _input_to_channels_last(module: nn.Module, args):
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-d weights in channels_last, in place, and the (B, 3, H, W) batch entering its
    backbone (a submodule named "backbone", also under DistributedDataParallel's "module.")
    converted to channels_last by a forward pre-hook. Returns the model."""
    model.to(memory_format=torch.channels_last)
    for name, module in model.named_modules():
        if name.split(".")[-1] == "backbone":
            module.register_forward_pre_hook(_input_to_channels_last)
            break
    return model


def apply_speed_switches(cfg, model: nn.Module) -> nn.Module:
    """SPEED.CUDNN_BENCHMARK (process-wide), SPEED.CHANNELS_LAST and SPEED.COMPILE (in place:
    ``nn.Module.compile`` keeps the state dict's keys) applied to ``model``; returns it."""
    speed = cfg.SPEED
    if speed.CUDNN_BENCHMARK:
        torch.backends.cudnn.benchmark = True
    if speed.CHANNELS_LAST:
        to_channels_last(model)
    if speed.COMPILE:
        model.compile()
    return model


def check_speed_cfg(cfg) -> None:
    name = cfg.SPEED.AMP_DTYPE
    require(name in AMP_DTYPES, "SPEED.AMP_DTYPE", name, f"must be one of {list(AMP_DTYPES)}")


register_config_check("SPEED", check_speed_cfg)

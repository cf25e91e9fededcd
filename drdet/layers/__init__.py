"""Layers: thin Python wrappers of the extension ops (DR loss, sigmoid focal loss, NMS), which
fall back to pure-PyTorch forms without the extension, and normalisation helpers."""

from ._ext import (
    ExtensionMissingWarning,
    extension_in_use,
    extension_loaded,
    get_cuda_kernels,
    set_cuda_kernels,
    use_extension,
)
from .batch_norm import FrozenBatchNorm2d
from .cpu_isa import cpu_isa, set_cpu_isa, supported_cpu_isas, use_cpu_isa
from .dr_loss import DRLoss, DRLossParams, dr_loss
from .nms import batched_nms, nms
from .sigmoid_focal_loss import SigmoidFocalLoss, sigmoid_focal_loss

__all__ = [
    "dr_loss",
    "DRLoss",
    "DRLossParams",
    "sigmoid_focal_loss",
    "SigmoidFocalLoss",
    "nms",
    "batched_nms",
    "FrozenBatchNorm2d",
    "cpu_isa",
    "set_cpu_isa",
    "supported_cpu_isas",
    "use_cpu_isa",
    "set_cuda_kernels",
    "get_cuda_kernels",
    "ExtensionMissingWarning",
    "extension_in_use",
    "extension_loaded",
    "use_extension",
]

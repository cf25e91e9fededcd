"""FCOS (Tian et al., ICCV 2019): head, target assignment, losses, post-processing and the
detector, registered as MODEL.META_ARCHITECTURE "FCOS"."""

from drdet.modeling.fcos.detector import FCOS, build_fcos, location_generator
from drdet.modeling.fcos.head import FCOSHead, build_fcos_head
from drdet.modeling.fcos.inference import FCOSPostProcessor, build_fcos_postprocessor
from drdet.modeling.fcos.loss import FCOSLossComputation, build_fcos_loss

__all__ = [
    "FCOS",
    "FCOSHead",
    "FCOSLossComputation",
    "FCOSPostProcessor",
    "build_fcos",
    "build_fcos_head",
    "build_fcos_loss",
    "build_fcos_postprocessor",
    "location_generator",
]

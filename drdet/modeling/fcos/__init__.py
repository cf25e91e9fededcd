"""FCOS (Tian et al., ICCV 2019): its config node, head, locations and their box coding, target
assignment, losses and the detector (registered as MODEL.META_ARCHITECTURE "FCOS");
post-processing is the dense detectors' own."""

from drdet.modeling.fcos.box_coder import DistanceCoder, location_generator
from drdet.modeling.fcos.detector import (
    FCOS,
    build_fcos,
    build_fcos_head,
    build_fcos_loss,
    build_fcos_postprocessor,
)
from drdet.modeling.fcos.head import FCOSHead
from drdet.modeling.fcos.loss import FCOSLossComputation

__all__ = [
    "FCOS",
    "DistanceCoder",
    "FCOSHead",
    "FCOSLossComputation",
    "build_fcos",
    "build_fcos_head",
    "build_fcos_loss",
    "build_fcos_postprocessor",
    "location_generator",
]

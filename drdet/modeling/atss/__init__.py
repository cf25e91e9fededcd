"""ATSS (Zhang et al., CVPR 2020): its config node, head, adaptive training sample selection,
losses and the detector (registered as MODEL.META_ARCHITECTURE "ATSS"); post-processing is the
dense detectors' own."""

from drdet.modeling.atss.assigner import atss_assign
from drdet.modeling.atss.detector import (
    ATSS,
    build_atss,
    build_atss_anchors,
    build_atss_head,
    build_atss_loss,
    build_atss_postprocessor,
)
from drdet.modeling.atss.head import ATSSHead
from drdet.modeling.atss.loss import ATSSLossComputation

__all__ = [
    "ATSS",
    "ATSSHead",
    "ATSSLossComputation",
    "atss_assign",
    "build_atss",
    "build_atss_anchors",
    "build_atss_head",
    "build_atss_loss",
    "build_atss_postprocessor",
]

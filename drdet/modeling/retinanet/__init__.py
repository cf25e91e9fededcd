"""RetinaNet: its config node, head, loss computation and the detector (registered as
MODEL.META_ARCHITECTURE "RetinaNet"); post-processing is the dense detectors' own."""

from drdet.modeling.retinanet.detector import (
    RetinaNet,
    build_retinanet,
    build_retinanet_anchors,
    build_retinanet_head,
    build_retinanet_loss,
    build_retinanet_postprocessor,
)
from drdet.modeling.retinanet.head import RetinaNetHead
from drdet.modeling.retinanet.loss import RetinaNetLossComputation

__all__ = [
    "RetinaNet",
    "RetinaNetHead",
    "RetinaNetLossComputation",
    "build_retinanet",
    "build_retinanet_anchors",
    "build_retinanet_head",
    "build_retinanet_loss",
    "build_retinanet_postprocessor",
]

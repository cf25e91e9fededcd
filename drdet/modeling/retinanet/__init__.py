"""RetinaNet head, loss computation and post-processing."""

from drdet.modeling.retinanet.head import RetinaNetHead, build_retinanet_head
from drdet.modeling.retinanet.inference import RetinaNetPostProcessor, build_retinanet_postprocessor
from drdet.modeling.retinanet.loss import RetinaNetLossComputation, build_retinanet_loss

__all__ = [
    "RetinaNetHead",
    "RetinaNetLossComputation",
    "RetinaNetPostProcessor",
    "build_retinanet_head",
    "build_retinanet_loss",
    "build_retinanet_postprocessor",
]

"""Ops and small modules the detector is built from (wrappers of the drdet._C extension)."""
from drdet.layers.nms import batched_nms, nms
from drdet.layers.sigmoid_focal_loss import SigmoidFocalLoss, sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss", "nms", "batched_nms"]

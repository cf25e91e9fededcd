"""Model components: backbones, anchors, box coding, matching, the classification losses, the
dense detectors' shared parts (dense/) and the detectors beside them (retinanet/, fcos/,
atss/)."""

from .atss import ATSS  # registers the ATSS meta-architecture
from .build import build_detector
from .dense import DenseDetector
from .fcos import FCOS  # registers the FCOS meta-architecture
from .losses import build_classification_loss
from .registry import BACKBONES, CLASSIFICATION_LOSSES, META_ARCHITECTURES
from .retinanet import RetinaNet  # registers the RetinaNet meta-architecture

__all__ = [
    "ATSS",
    "BACKBONES",
    "CLASSIFICATION_LOSSES",
    "FCOS",
    "META_ARCHITECTURES",
    "DenseDetector",
    "RetinaNet",
    "build_classification_loss",
    "build_detector",
]

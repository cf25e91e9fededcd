"""Model components: backbone, anchors, box coding, matching, the RetinaNet head and the detector."""

from .detector import RetinaNet, build_detector  # noqa: E402
from .fcos import FCOS  # noqa: E402  (registers the FCOS meta-architecture)
from .losses import build_classification_loss  # noqa: E402
from .registry import BACKBONES, CLASSIFICATION_LOSSES, META_ARCHITECTURES  # noqa: E402

__all__ = [
    "BACKBONES",
    "CLASSIFICATION_LOSSES",
    "FCOS",
    "META_ARCHITECTURES",
    "RetinaNet",
    "build_classification_loss",
    "build_detector",
]

"""Model components: backbone, anchors, box coding, matching, the RetinaNet head and the detector."""
from .detector import RetinaNet, build_detector  # noqa: E402

__all__ = ["RetinaNet", "build_detector"]

"""Drawing and naming helpers shared by the tools (tools/demo.py and the plotting tools); the
class names of a config come from drdet.engine.defaults.class_names_from_cfg."""

from collections.abc import Sequence

import cv2
import numpy as np


def label_name(label: int, class_names: Sequence[str] | None) -> str:
    """The name of contiguous label ``label`` (1..C), or "class <label>" when unknown."""
    if class_names is not None and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return f"class {label}"


def _colour(label: int) -> tuple:
    """A fixed, well separated BGR colour per label (golden-ratio hue steps)."""
    hue = int((label * 0.618033988749895 % 1.0) * 179)
    hsv = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 BGR with each detection drawn: its box, and
    "<class name> <score>" above it.

    Args:
        boxes: (K, 4) float x1y1x2y2 in the image's pixels; scores: (K,); labels: (K,) in 1..C.
    """
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    font_scale = max(0.35, min(image.shape[:2]) / 900)
    for box, score, label in zip(np.asarray(boxes), np.asarray(scores), np.asarray(labels)):
        colour = _colour(int(label))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = f"{label_name(int(label), class_names)} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - th - base if y1 - th - base >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + tw, top + th + base), colour, -1)
        cv2.putText(
            out,
            text,
            (x1, top + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out

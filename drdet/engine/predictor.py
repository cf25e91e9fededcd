"""Predictor: one OpenCV image in, detections in that image's pixels out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from drdet.checkpoint import CLASSES_KEY, Checkpointer, check_classes
from drdet.data.transforms import resized_hw
from drdet.export.config import export_suffix
from drdet.modeling import build_detector
from drdet.modeling.inference_copy import prepare_for_inference


class Predictor:
    """Builds the detector of ``cfg`` in eval mode on cfg.MODEL.DEVICE, loads cfg.MODEL.WEIGHT
    (when set), and runs it on one image at a time (like detectron2's DefaultPredictor). A
    MODEL.WEIGHT ending in .onnx or .pt2 is an exported model (tools/export_model.py), run on
    the CPU by onnxruntime or torch.export (drdet.export.runtime.ExportedDetector).

    The image is resized with INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (bilinear) and given to the
    network as BGR 0-255 when INPUT.TO_BGR255, else RGB 0-1.

    ``model`` is the detector with the loaded weights (what ``model.state_dict()`` saves);
    calls run ``inference_model``, its copy made by
    :func:`~drdet.modeling.inference_copy.prepare_for_inference` (FrozenBN folded into the
    convolutions, channels_last on the CPU). After changing ``model``'s weights, call
    :meth:`refresh` to make a new copy.

    ``checkpoint_classes`` is the "classes" record of cfg.MODEL.WEIGHT ({"num_classes": K,
    "names": [...]}, checked against the config's class count), or None when the weights
    record none (or there are no weights).
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.checkpoint_classes: dict[str, Any] | None = None
        if export_suffix(cfg.MODEL.WEIGHT):  # an exported model (.onnx, .pt2): on the CPU
            from drdet.export.runtime import ExportedDetector

            self.device = torch.device("cpu")
            self.model = ExportedDetector(cfg.MODEL.WEIGHT, self.cfg)
            self.checkpoint_classes = self.model.classes
            check_classes(self.checkpoint_classes, cfg.MODEL.WEIGHT, self.cfg)
        else:
            self.model = build_detector(self.cfg).to(self.device).eval()
            if cfg.MODEL.WEIGHT:
                extra = Checkpointer(self.model).load(
                    cfg.MODEL.WEIGHT, load_training_state=False, strict=True
                )
                self.checkpoint_classes = extra.get(CLASSES_KEY)
                check_classes(self.checkpoint_classes, cfg.MODEL.WEIGHT, self.cfg)
        self.refresh()
        self.min_size = cfg.INPUT.MIN_SIZE_TEST
        self.max_size = cfg.INPUT.MAX_SIZE_TEST
        self.to_bgr255 = cfg.INPUT.TO_BGR255

    @property
    def class_names(self) -> list[str] | None:
        """Names of labels 1..K recorded in the checkpoint (index k-1 names label k), or None."""
        names = (self.checkpoint_classes or {}).get("names")
        return list(names) if names else None

    def refresh(self) -> None:
        """Rebuilds ``inference_model`` from ``model`` (after its weights changed)."""
        self.inference_model = prepare_for_inference(self.model)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict[str, Tensor]:
        """Detections for ``image`` (H, W, 3) uint8 BGR (as cv2.imread gives it).

        Returns:
            "boxes" (K, 4) float x1y1x2y2 in the image's pixels, "scores" (K,) float decreasing,
            "labels" (K,) int64 in 1..NUM_CLASSES-1; CPU tensors.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            desc = (
                f"{image.dtype} array of shape {image.shape}"
                if isinstance(image, np.ndarray)
                else type(image).__name__
            )
            raise ValueError(f"Predictor: `image` must be an (H, W, 3) uint8 BGR array, got {desc}")
        height, width = image.shape[:2]
        tensor = (
            torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float()
        )
        if not self.to_bgr255:
            tensor = tensor.flip(0) / 255.0
        size = resized_hw(height, width, self.min_size, self.max_size)
        tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        detections = self.inference_model([tensor], original_sizes=[(height, width)])[0]
        return {k: v.cpu() for k, v in detections.items()}

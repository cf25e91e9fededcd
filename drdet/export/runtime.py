"""Running an exported model (.onnx through onnxruntime, .pt2 through torch.export.load) the way
drdet runs a detector in eval: ``model(images, original_sizes=...)`` -> one dict of detections
per image. Used by drdet.Predictor, tools/demo.py and tools/test_net.py when MODEL.WEIGHT is an
exported file; needs neither the compiled extension nor the model's code."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from drdet.export import nms as _nms  # noqa: F401  (registers the NMS op a .pt2 calls)
from drdet.export.config import METADATA_KEY, check_baked_values, export_suffix
from drdet.utils.errors import UserFileNotFoundError, UserValueError


class OnnxRunner:
    """An onnxruntime session on the CPU: (B, 3, H, W) float32 -> the four outputs."""

    def __init__(self, path: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no constant-folding notes per session
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = json.loads(props.get(METADATA_KEY, "{}"))

    def __call__(self, images: Tensor) -> list[Tensor]:
        feed = {"images": np.ascontiguousarray(images.numpy(), dtype=np.float32)}
        return [torch.from_numpy(np.asarray(out)) for out in self.session.run(None, feed)]


class ProgramRunner:
    """A torch.export program (.pt2) on the CPU."""

    def __init__(self, path: str):
        extra = {METADATA_KEY: ""}
        self.module = torch.export.load(path, extra_files=extra).module()
        self.metadata = json.loads(extra[METADATA_KEY] or "{}")

    def __call__(self, images: Tensor) -> list[Tensor]:
        return list(self.module(images.float()))


def load_runner(path: str) -> OnnxRunner | ProgramRunner:
    """The runner of the exported file ``path`` (by its suffix); errors name the file."""
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"exported model {path!r} does not exist")
    try:
        return OnnxRunner(path) if export_suffix(path) == ".onnx" else ProgramRunner(path)
    except Exception as err:  # onnxruntime, onnx and torch.export raise types of their own
        raise UserValueError(f"cannot load exported model {path!r}: {err}") from err


class ExportedDetector(nn.Module):
    """An exported model with the eval interface of :class:`~drdet.modeling.dense.DenseDetector`.

    Each image runs as a batch of its own, so that it is clipped to its own size and its
    padding is the graph's (as drdet's detector pads each image's normalised pixels with 0).

    Attributes:
        path: the file; metadata: its json record ({"classes": {"num_classes": C, "names":
        [...]}, "config": {key: value}}); classes: the classes record (as a checkpoint's);
        postprocessor: ``nms_thresh`` of the exported post-processing (what the multi-scale
        test merges with).
    """

    def __init__(self, path: str, cfg=None):
        super().__init__()
        self.path = path
        self.runner = load_runner(path)
        self.metadata: dict[str, Any] = self.runner.metadata
        self.classes = self.metadata.get("classes")
        config = self.metadata.get("config", {})
        if cfg is not None:
            check_baked_values(config, cfg, path)
        nms = [v for k, v in config.items() if k.endswith(".NMS_TH")]
        # (RetinaNet's 0.5 when the record names no single detector node)
        self.postprocessor = SimpleNamespace(nms_thresh=nms[0] if len(nms) == 1 else 0.5)

    def __deepcopy__(self, memo):
        return self  # no state a caller could change: prepare_for_inference's copy is itself

    @torch.no_grad()
    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """(3, H_i, W_i) images as DenseDetector takes them -> per image "boxes" (K, 4) in
        pixels of the image (or of ``original_sizes[i]``), "scores" (K,), "labels" (K,)."""
        detections = []
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"{self.path}: images[{i}] has shape {tuple(image.shape)}, expected (3, H, W)"
                )
            boxes, scores, labels, count = self.runner(image[None].cpu().float())
            n = int(count[0])
            det = {"boxes": boxes[0, :n], "scores": scores[0, :n], "labels": labels[0, :n]}
            if original_sizes is not None:
                (oh, ow), (h, w) = original_sizes[i], image.shape[-2:]
                det["boxes"] = det["boxes"] * det["boxes"].new_tensor([ow / w, oh / h] * 2)
            detections.append(det)
        return detections

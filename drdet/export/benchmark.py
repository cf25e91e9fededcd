"""onnxruntime against drdet's eager inference on the CPU, per image, side by side in one run
(tools/benchmark_export.py): the same detector, weights and image, called in turn."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from drdet.export.export import export_model
from drdet.export.runtime import ExportedDetector
from drdet.modeling import build_detector
from drdet.modeling.inference_copy import prepare_for_inference
from drdet.utils.benchmark import timed_alternating


def benchmark_export(cfg, height: int, width: int, warmup: int, reps: int) -> dict[str, float]:
    """Median seconds per image of drdet's eager inference (``prepare_for_inference``, what the
    Predictor and test_net run; "_nchw": the same copy without channels_last and packed
    convolutions) and of the .onnx export in onnxruntime, on one (3, height,
    width) image, with cfg.MODEL.WEIGHT or, when empty, seeded random weights (a Dr. Retina's
    prior 0.5 then keeps about every candidate: post-processing at its busiest). Also the
    export's seconds and each side's number of detections."""
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with tempfile.TemporaryDirectory() as folder:
        weight = cfg.MODEL.WEIGHT
        if not weight:
            weight = os.path.join(folder, "random.pth")
            torch.save({"model": model.state_dict()}, weight)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHT = weight
        model.load_state_dict(torch.load(weight, weights_only=True)["model"])
        start = time.perf_counter()
        (path,) = export_model(cfg, [os.path.join(folder, "model.onnx")])
        export_seconds = time.perf_counter() - start
        exported = ExportedDetector(path, cfg)
        eager = prepare_for_inference(model)
        nchw = prepare_for_inference(model, channels_last=False, prepack=False)
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1)) * 255
        calls = {
            "drdet_eager": lambda: eager([image]),
            "drdet_eager_nchw": lambda: nchw([image]),
            "onnxruntime": lambda: exported([image]),
        }
        with torch.no_grad():
            times = timed_alternating(calls, "cpu", warmup, reps)
            counts = {f"{k}_detections": float(len(f()[0]["scores"])) for k, f in calls.items()}
    return {**times, **counts, "export_seconds": export_seconds}

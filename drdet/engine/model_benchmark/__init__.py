"""drdet's detectors against torchvision's, same architecture, weights and images
(tools/benchmark_model.py): the two models built alike (models.py), the timed training steps and
inference (measure.py), the table and json (report.py); and drdet's detectors side by side
(measure.detector_rows)."""

from drdet.engine.model_benchmark.measure import Row, detector_rows, inference_rows, train_rows
from drdet.engine.model_benchmark.models import (
    DETECTORS,
    MODELS,
    BenchmarkSetup,
    model_pair,
    random_batch,
)
from drdet.engine.model_benchmark.report import print_rows, write_json

__all__ = [
    "DETECTORS",
    "MODELS",
    "BenchmarkSetup",
    "Row",
    "detector_rows",
    "inference_rows",
    "model_pair",
    "print_rows",
    "random_batch",
    "train_rows",
    "write_json",
]

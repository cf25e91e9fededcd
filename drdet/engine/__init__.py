"""Training, inference and prediction entry points."""

from drdet.engine.predictor import Predictor

__all__ = ["Predictor"]

"""Detection metrics: COCO (hotcoco or pycocotools, TEST.COCO_EVAL_BACKEND) and PASCAL VOC, registered as the evaluators "coco"
and "voc07" (drdet/evaluation/registry.py)."""

from .coco_backends import COCO_EVAL_BACKENDS, DEFAULT_COCO_EVAL_BACKEND
from .coco_evaluation import (
    COCO_METRICS,
    coco_evaluator,
    evaluate_coco,
    gather_predictions,
    merge_predictions,
    predictions_to_coco_results,
)
from .registry import EVALUATORS, Evaluator, evaluator_names, run_evaluators
from .voc_evaluation import evaluate_voc, voc07_evaluator, voc_ap

__all__ = [
    "COCO_EVAL_BACKENDS",
    "COCO_METRICS",
    "DEFAULT_COCO_EVAL_BACKEND",
    "EVALUATORS",
    "Evaluator",
    "coco_evaluator",
    "evaluate_coco",
    "evaluator_names",
    "gather_predictions",
    "merge_predictions",
    "predictions_to_coco_results",
    "run_evaluators",
    "evaluate_voc",
    "voc07_evaluator",
    "voc_ap",
]

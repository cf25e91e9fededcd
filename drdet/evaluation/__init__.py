"""Detection metrics: COCO (pycocotools) and PASCAL VOC, registered as the evaluators "coco"
and "voc07" (drdet/evaluation/registry.py)."""

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
    "COCO_METRICS",
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

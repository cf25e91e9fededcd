"""Detection metrics: COCO (pycocotools) and PASCAL VOC."""
from .coco_evaluation import (COCO_METRICS, evaluate_coco, gather_predictions, merge_predictions,
                              predictions_to_coco_results)
from .voc_evaluation import evaluate_voc, voc_ap

__all__ = ["COCO_METRICS", "evaluate_coco", "gather_predictions", "merge_predictions",
           "predictions_to_coco_results", "evaluate_voc", "voc_ap"]

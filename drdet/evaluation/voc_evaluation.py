"""PASCAL VOC detection AP at IoU 0.5 (VOC07 11-point or area under the PR curve).

Follows the VOC devkit's matching: detections of a class, over all images, are taken in order of
decreasing score; each one is a true positive when its best-overlapping ground truth box of that
class in its image has IoU > 0.5, is not "difficult" and is not matched yet; a detection whose best
match is difficult counts neither way; everything else is a false positive. Difficult boxes do not
count in the number of positives. Boxes are continuous x1y1x2y2 (width = x2 - x1, drdet's
convention; the devkit adds 1 pixel to widths, which changes IoUs slightly for small boxes).
"""

import logging
from collections.abc import Mapping
from typing import cast

import numpy as np
import torch

from .registry import EVALUATORS

logger = logging.getLogger(__name__)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from recall/precision arrays (cumulative, in score order).

    use_07_metric: mean over t in {0, 0.1, ..., 1} of the maximum precision at recall >= t (0 if
    none). Otherwise the area under the precision envelope (precision made non-increasing)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    changed = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[changed + 1] - r[changed]) * p[changed + 1]))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, np.finfo(np.float64).eps)


GroundTruth = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _ground_truth_arrays(
    predictions: Mapping[int, Mapping[str, object]],
    ground_truth: Mapping[int, Mapping[str, object]],
) -> GroundTruth:
    """{image_id: (boxes (G, 4) float64, labels (G,) int64, difficult (G,) bool)}; an error for
    a predicted image without ground truth, or arrays of different lengths."""
    unknown = sorted(set(predictions) - set(ground_truth))
    if unknown:
        raise ValueError(f"evaluate_voc: predicted image ids {unknown[:10]} have no ground truth")
    gt = {}
    for image_id, g in ground_truth.items():
        boxes = _np(g["boxes"]).astype(np.float64).reshape(-1, 4)
        labels = _np(g["labels"]).astype(np.int64).reshape(-1)
        difficult = _np(g.get("difficult", np.zeros(len(labels), bool))).astype(bool).reshape(-1)
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(
                f"evaluate_voc: image {image_id}: boxes, labels and difficult differ in length"
            )
        gt[image_id] = (boxes, labels, difficult)
    return gt


def _class_detections(
    predictions: Mapping[int, Mapping[str, object]], cls: int
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(image id of each detection, scores (D,), boxes (D, 4)) of class `cls`, over all
    images in the order of `predictions`."""
    det_images: list[int] = []
    det_scores, det_boxes = [], []
    for image_id, p in predictions.items():
        keep = _np(p["labels"]).reshape(-1) == cls
        scores = _np(p["scores"]).astype(np.float64).reshape(-1)[keep]
        det_images += [image_id] * len(scores)
        det_scores.append(scores)
        det_boxes.append(_np(p["boxes"]).astype(np.float64).reshape(-1, 4)[keep])
    scores = np.concatenate(det_scores) if det_scores else np.zeros(0)
    boxes = np.concatenate(det_boxes) if det_boxes else np.zeros((0, 4))
    return det_images, scores, boxes


def _match(
    det_images: list[int],
    scores: np.ndarray,
    boxes: np.ndarray,
    class_gt: dict[int, tuple[np.ndarray, np.ndarray]],
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(true positive, false positive) flags of the detections in order of decreasing score,
    matched greedily as the devkit does (a detection whose best match is difficult: neither)."""
    order = np.argsort(-scores, kind="stable")
    matched = {i: np.zeros(len(b), bool) for i, (b, _) in class_gt.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, d in enumerate(order):
        image_id = det_images[d]
        g_boxes, g_difficult = class_gt[image_id]
        if len(g_boxes) == 0:
            fp[rank] = 1
            continue
        ious = _iou(boxes[d], g_boxes)
        best = int(np.argmax(ious))
        if ious[best] <= iou_threshold:
            fp[rank] = 1
        elif not g_difficult[best]:
            if matched[image_id][best]:
                fp[rank] = 1
            else:
                matched[image_id][best] = True
                tp[rank] = 1
    return tp, fp


def evaluate_voc(
    predictions: Mapping[int, Mapping[str, object]],
    ground_truth: Mapping[int, Mapping[str, object]],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, object]:
    """Per-class and mean AP.

    predictions: {image_id: {"boxes": (K, 4) x1y1x2y2 pixels, "scores": (K,), "labels": (K,)
    int 1..num_classes-1}}; ground_truth: {image_id: {"boxes": (G, 4), "labels": (G,),
    "difficult": (G,) bool (optional, default all False)}}. num_classes counts the background
    (as MODEL.NUM_CLASSES). Images missing from `predictions` have no detection;
    predicted images missing from `ground_truth` are an error.

    Returns {"ap": {class id: AP} (NaN for a class without non-difficult ground truth), "mAP":
    mean over the classes whose AP is not NaN}.
    """
    gt = _ground_truth_arrays(predictions, ground_truth)
    aps: dict[int, float] = {}
    for cls in range(1, num_classes):
        class_gt = {i: (b[l == cls], d[l == cls]) for i, (b, l, d) in gt.items()}
        npos = int(sum((~d).sum() for _, d in class_gt.values()))
        if npos == 0:
            aps[cls] = float("nan")
            continue
        det_images, scores, boxes = _class_detections(predictions, cls)
        tp, fp = _match(det_images, scores, boxes, class_gt, iou_threshold)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[cls] = voc_ap(recall, precision, use_07_metric)
    valid = [v for v in aps.values() if not np.isnan(v)]
    return {"ap": aps, "mAP": float(np.mean(valid)) if valid else float("nan")}


@EVALUATORS.register("voc07")
def voc07_evaluator(
    dataset,
    predictions: Mapping[int, Mapping[str, object]],
    output_folder: str | None = None,
    per_category: bool = False,
) -> dict[str, float]:
    """The "voc07" evaluator: {"VOC07_mAP50": the VOC07 11-point mAP at IoU 0.5 with difficult
    objects ignored} against ``dataset.records`` (dicts with "image_id", "boxes", "labels",
    "difficult") and ``dataset.num_classes`` foreground classes. Writes no file."""
    ground_truth = {rec["image_id"]: rec for rec in dataset.records}
    voc = evaluate_voc(predictions, ground_truth, num_classes=dataset.num_classes + 1)
    mean_ap = float(cast(float, voc["mAP"]))
    logger.info("VOC07 mAP@0.5 (11-point, difficult ignored): %.4f", mean_ap)
    return {"VOC07_mAP50": mean_ap}

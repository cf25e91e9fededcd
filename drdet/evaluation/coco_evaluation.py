"""COCO bbox evaluation with pycocotools, and gathering per-rank predictions.

Predictions, per image: {image_id: {"boxes": (K, 4) float x1y1x2y2 in original-image pixels,
"scores": (K,) float, "labels": (K,) int64 contiguous class ids 1..C}} (tensors or arrays).
"""

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..utils import comm
from ..utils.io import atomic_write_json
from .registry import EVALUATORS

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Names of the 12 numbers COCOeval.summarize() prints, in order (stats[0..11]).
COCO_STATS_NAMES = COCO_METRICS + ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

logger = logging.getLogger(__name__)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def predictions_to_coco_results(
    predictions: Mapping[int, Mapping[str, object]], contiguous_to_json: Mapping[int, int]
) -> list[dict]:
    """Convert per-image predictions to the COCO results list
    [{"image_id", "category_id" (json id), "bbox": [x, y, w, h] pixels, "score"}].

    Raises ValueError for malformed entries (wrong shapes, a label missing from
    `contiguous_to_json`, non-finite boxes or scores).
    """
    results = []
    for image_id, pred in predictions.items():
        boxes = _as_numpy(pred["boxes"]).astype(np.float64)
        scores = _as_numpy(pred["scores"]).astype(np.float64)
        labels = _as_numpy(pred["labels"]).astype(np.int64)
        k = len(scores)
        if boxes.shape != (k, 4) or labels.shape != (k,) or scores.shape != (k,):
            raise ValueError(
                f"image {image_id}: expected boxes (K, 4), scores (K,), labels (K,), "
                f"got {boxes.shape}, {scores.shape}, {labels.shape}"
            )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"image {image_id}: non-finite box or score in the predictions")
        unknown = sorted(set(labels.tolist()) - set(contiguous_to_json))
        if unknown:
            raise ValueError(
                f"image {image_id}: labels {unknown} are not in contiguous_to_json "
                f"(known: {sorted(contiguous_to_json)})"
            )
        xywh = boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(contiguous_to_json[label]),
                    "bbox": box,
                    "score": score,
                }
            )
    return results


def evaluate_coco(
    coco_gt,
    predictions: Mapping[int, Mapping[str, object]],
    contiguous_to_json: Mapping[int, int],
    output_folder: str | None = None,
    per_category: bool = False,
    log: logging.Logger | None = None,
) -> dict[str, float]:
    """Run COCOeval (bbox) on `predictions` against `coco_gt` (a pycocotools COCO object).

    Evaluates on the images of `predictions` (every image the loop ran on, including those with
    no detection). Writes output_folder/bbox.json (atomically) when a folder is given, logs
    pycocotools' 12-number summary, and returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as
    fractions in [0, 1] (pycocotools' -1 = no ground truth in that size range), plus
    "AP-<category name>" per category when `per_category`. With no detection at all every metric
    is 0.0 (pycocotools cannot load an empty results list).
    """
    from pycocotools.cocoeval import COCOeval

    log = log or logger
    if not predictions:
        raise ValueError("evaluate_coco: predictions is empty (no image was evaluated)")
    missing = sorted(set(predictions) - set(coco_gt.getImgIds()))
    if missing:
        raise ValueError(f"evaluate_coco: image ids {missing[:10]} are not in the ground truth")
    results = predictions_to_coco_results(predictions, contiguous_to_json)
    if output_folder:
        atomic_write_json(os.path.join(output_folder, "bbox.json"), results)
    if not results:
        log.warning("No detection on any of the %d images: AP = 0", len(predictions))
        metrics = {name: 0.0 for name in COCO_METRICS}
        if per_category:
            for cat in (coco_gt.cats[c] for c in sorted(contiguous_to_json.values())):
                metrics[f"AP-{cat['name']}"] = 0.0
        return metrics

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_dt = coco_gt.loadRes(results)
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.imgIds = sorted(int(i) for i in predictions)
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    log.info("COCO bbox evaluation:\n%s", summary.getvalue().rstrip())
    metrics = {name: float(v) for name, v in zip(COCO_METRICS, coco_eval.stats[:6])}
    if per_category:
        metrics.update(_per_category_ap(coco_gt, coco_eval))
    return metrics


@EVALUATORS.register("coco")
def coco_evaluator(
    dataset,
    predictions: Mapping[int, Mapping[str, object]],
    output_folder: str | None = None,
    per_category: bool = False,
) -> dict[str, float]:
    """The "coco" evaluator: :func:`evaluate_coco` against ``dataset.coco`` (a pycocotools COCO
    ground truth), labels mapped by ``dataset.contiguous_id_to_category_id``."""
    return evaluate_coco(
        dataset.coco,
        predictions,
        dataset.contiguous_id_to_category_id,
        output_folder=output_folder,
        per_category=per_category,
    )


def _per_category_ap(coco_gt, coco_eval) -> dict[str, float]:
    # precision: (iou thresholds, recall points, categories, area ranges, max dets); -1 = no gt.
    precision = coco_eval.eval["precision"]
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = coco_gt.cats[cat_id]["name"]
        out[f"AP-{name}"] = float(p.mean()) if p.size else float("nan")
    return out


def merge_predictions(
    per_rank: Iterable[Mapping[int, object]], image_ids: Iterable[int]
) -> dict[int, object]:
    """Merge per-rank prediction dicts, checking that every id of `image_ids` appears exactly once
    over all ranks and that no other id appears. Raises RuntimeError listing the offenders."""
    merged: dict[int, object] = {}
    duplicated = []
    for part in per_rank:
        for image_id, pred in part.items():
            if image_id in merged:
                duplicated.append(image_id)
            merged[image_id] = pred
    expected = set(image_ids)
    missing = sorted(expected - set(merged))
    extra = sorted(set(merged) - expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} images have no prediction entry (first: {missing[:10]})")
    if duplicated:
        problems.append(
            f"{len(duplicated)} images were predicted more than once "
            f"(first: {sorted(duplicated)[:10]})"
        )
    if extra:
        problems.append(
            f"{len(extra)} predicted images are not in the dataset (first: {extra[:10]})"
        )
    if problems:
        raise RuntimeError(
            "inference results are inconsistent with the dataset: "
            + "; ".join(problems)
            + ". Check the test sampler (each image exactly once)."
        )
    return {i: merged[i] for i in sorted(merged)}


def gather_predictions(
    predictions: Mapping[int, object], image_ids: Iterable[int]
) -> dict[int, object] | None:
    """Gather every rank's predictions to rank 0 and merge them with `merge_predictions`.
    Returns the merged dict on rank 0 and None on the other ranks. Tensors are moved to the CPU
    before pickling."""
    cpu = {
        i: (
            {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in p.items()}
            if isinstance(p, Mapping)
            else p
        )
        for i, p in predictions.items()
    }
    parts = comm.gather(cpu, dst=0)
    if not comm.is_main_process():
        return None
    return merge_predictions(parts, image_ids)

"""COCO bbox evaluation (pycocotools or hotcoco: drdet/evaluation/coco_backends.py), and
gathering per-rank predictions.

Predictions, per image: {image_id: {"boxes": (K, 4) float x1y1x2y2 in original-image pixels,
"scores": (K,) float, "labels": (K,) int64 contiguous class ids 1..C}} (tensors or arrays).
They become one (D, 7) results array (`predictions_to_array`) with no loop over detections.
"""

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..utils import comm
from ..utils.io import atomic_write_text
from .coco_backends import (
    BACKEND_KEY,
    DEFAULT_COCO_EVAL_BACKEND,
    coco_dataset_dict,
    run_coco_eval,
    usable_backend,
)
from .registry import EVALUATORS

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Names of the 12 numbers COCOeval.summarize() prints, in order (stats[0..11]).
COCO_STATS_NAMES = COCO_METRICS + ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# One row of the results array: [image_id, x, y, w, h, score, category_id] (pycocotools' form).
RESULT_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")

logger = logging.getLogger(__name__)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _checked_image(image_id, pred: Mapping[str, object]) -> tuple[np.ndarray, ...]:
    boxes = _as_numpy(pred["boxes"]).astype(np.float64)
    scores = _as_numpy(pred["scores"]).astype(np.float64)
    labels = _as_numpy(pred["labels"]).astype(np.int64)
    k = len(scores)
    if boxes.shape != (k, 4) or labels.shape != (k,) or scores.shape != (k,):
        raise ValueError(
            f"image {image_id}: expected boxes (K, 4), scores (K,), labels (K,), "
            f"got {boxes.shape}, {scores.shape}, {labels.shape}"
        )
    return boxes, scores, labels


def predictions_to_array(
    predictions: Mapping[int, Mapping[str, object]], contiguous_to_json: Mapping[int, int]
) -> np.ndarray:
    """(D, 7) float64 results, rows [image_id, x, y, w, h (pixels), score, json category id],
    images in the order of `predictions`, each image's detections in their order.

    Raises ValueError naming the image for malformed entries (wrong shapes, a label missing
    from `contiguous_to_json`, non-finite boxes or scores)."""
    checked = [_checked_image(i, p) for i, p in predictions.items()]
    counts = np.array([len(c[1]) for c in checked], dtype=np.int64)
    image_ids = np.repeat(np.array(list(predictions), dtype=np.float64), counts)
    boxes = np.concatenate([c[0] for c in checked]) if checked else np.zeros((0, 4))
    scores = np.concatenate([c[1] for c in checked]) if checked else np.zeros(0)
    labels = np.concatenate([c[2] for c in checked]) if checked else np.zeros(0, np.int64)
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    if not finite.all():
        raise ValueError(
            f"image {image_ids[np.argmin(finite)]:.0f}: non-finite box or score in the predictions"
        )
    table = np.full(max(contiguous_to_json, default=0) + 2, -1, dtype=np.int64)
    table[list(contiguous_to_json)] = list(contiguous_to_json.values())
    category = table[np.clip(labels, -1, len(table) - 1)]
    if (category < 0).any():
        first = int(image_ids[np.argmax(category < 0)])
        unknown = sorted(set(labels[image_ids == first][category[image_ids == first] < 0].tolist()))
        raise ValueError(
            f"image {first}: labels {unknown} are not in contiguous_to_json "
            f"(known: {sorted(contiguous_to_json)})"
        )
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return np.column_stack([image_ids, xywh, scores, category.astype(np.float64)])


def results_from_array(results: np.ndarray) -> list[dict]:
    """The COCO results list [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}] of a
    (D, 7) results array (Python ints and floats)."""
    image_ids = results[:, 0].astype(np.int64).tolist()
    categories = results[:, 6].astype(np.int64).tolist()
    keys = ("image_id", "category_id", "bbox", "score")
    rows = zip(image_ids, categories, results[:, 1:5].tolist(), results[:, 5].tolist())
    return [dict(zip(keys, row)) for row in rows]


def predictions_to_coco_results(
    predictions: Mapping[int, Mapping[str, object]], contiguous_to_json: Mapping[int, int]
) -> list[dict]:
    """Convert per-image predictions to the COCO results list
    [{"image_id", "category_id" (json id), "bbox": [x, y, w, h] pixels, "score"}].

    Raises ValueError for malformed entries (see `predictions_to_array`).
    """
    return results_from_array(predictions_to_array(predictions, contiguous_to_json))


_RESULT_JSON = '{{"image_id": {}, "category_id": {}, "bbox": [{}, {}, {}, {}], "score": {}}}'


def results_json(results: np.ndarray) -> str:
    """The COCO results file (json.dumps of `results_from_array(results)`, the same text),
    formatted column by column without building the list of dicts."""
    columns = [results[:, 0].astype(np.int64).tolist(), results[:, 6].astype(np.int64).tolist()]
    columns += [results[:, c].tolist() for c in (1, 2, 3, 4, 5)]
    return "[" + ", ".join(map(_RESULT_JSON.format, *columns)) + "]"


def evaluate_coco(
    coco_gt,
    predictions: Mapping[int, Mapping[str, object]],
    contiguous_to_json: Mapping[int, int],
    output_folder: str | None = None,
    per_category: bool = False,
    log: logging.Logger | None = None,
    backend: str = DEFAULT_COCO_EVAL_BACKEND,
) -> dict[str, float]:
    """COCO bbox evaluation of `predictions` against `coco_gt` (a COCO json dict as
    load_coco_json returns, or a pycocotools COCO object) with `backend` (COCO_EVAL_BACKENDS;
    hotcoco falls back to pycocotools, with a warning, where it cannot be imported).

    Evaluates on the images of `predictions` (every image the loop ran on, including those with
    no detection). Writes output_folder/bbox.json (atomically) when a folder is given, logs the
    12-number summary, and returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as fractions in
    [0, 1] (-1 = no ground truth in that size range), plus "AP-<category name>" per category
    when `per_category`. With no detection at all every metric is 0.0.
    """
    log = log or logger
    backend = usable_backend(backend)
    if not predictions:
        raise ValueError("evaluate_coco: predictions is empty (no image was evaluated)")
    gt = coco_dataset_dict(coco_gt)
    missing = sorted(set(predictions) - {img["id"] for img in gt["images"]})
    if missing:
        raise ValueError(f"evaluate_coco: image ids {missing[:10]} are not in the ground truth")
    results = predictions_to_array(predictions, contiguous_to_json)
    if output_folder:
        atomic_write_text(os.path.join(output_folder, "bbox.json"), results_json(results))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    if len(results) == 0:
        log.warning("No detection on any of the %d images: AP = 0", len(predictions))
        metrics = {name: 0.0 for name in COCO_METRICS}
        if per_category:
            for cat in sorted(contiguous_to_json.values()):
                metrics[f"AP-{names[cat]}"] = 0.0
        return metrics
    out = run_coco_eval(backend, coco_gt, results, sorted(int(i) for i in predictions))
    log.info("COCO bbox evaluation (%s):\n%s", backend, out.summary)
    metrics = {name: float(v) for name, v in zip(COCO_METRICS, out.stats[:6])}
    if per_category:
        metrics.update(per_category_ap(out.precision, out.category_ids, names))
    return metrics


@EVALUATORS.register("coco")
def coco_evaluator(
    dataset,
    predictions: Mapping[int, Mapping[str, object]],
    output_folder: str | None = None,
    per_category: bool = False,
) -> dict[str, float]:
    """The "coco" evaluator: :func:`evaluate_coco` against the dataset's ground truth
    (``dataset.coco_dict()`` where it has one, else ``dataset.coco``, a pycocotools COCO),
    labels mapped by ``dataset.contiguous_id_to_category_id``, with the backend
    ``dataset.coco_eval_backend`` (TEST.COCO_EVAL_BACKEND, which build_data_loader sets on test
    sets; DEFAULT_COCO_EVAL_BACKEND when absent)."""
    backend = usable_backend(
        getattr(dataset, "coco_eval_backend", DEFAULT_COCO_EVAL_BACKEND), BACKEND_KEY
    )
    if backend == "hotcoco" and hasattr(dataset, "coco_dict"):
        coco_gt = dataset.coco_dict()  # no pycocotools index to build
    else:
        coco_gt = dataset.coco
    return evaluate_coco(
        coco_gt,
        predictions,
        dataset.contiguous_id_to_category_id,
        output_folder=output_folder,
        per_category=per_category,
        backend=backend,
    )


def per_category_ap(
    precision: np.ndarray, category_ids: list, names: Mapping[int, str]
) -> dict[str, float]:
    """{"AP-<name>": AP over IoU .50:.95, all areas, 100 detections} per category, from the
    (T, R, K, A, M) precision array (-1 = undefined; NaN for a category without ground truth)."""
    out = {}
    for k, cat_id in enumerate(category_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[f"AP-{names[cat_id]}"] = float(p.mean()) if p.size else float("nan")
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

"""The programs that compute the COCO bbox metric: pycocotools, the reference, and hotcoco, a
reimplementation in Rust that gives the same numbers (its 12 summary numbers and precision
array equal pycocotools' to 1e-6 in tests/test_coco_eval_backends.py, which `make test` runs)
in a fraction of the time (docs/BENCHMARKS.md). The config key TEST.COCO_EVAL_BACKEND picks one;
when hotcoco is chosen but cannot be imported (a machine that carries only pycocotools),
pycocotools runs instead, with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from typing import Any, NamedTuple

import numpy as np

from drdet.config import register_config_check

# The values of TEST.COCO_EVAL_BACKEND; the first is the default.
COCO_EVAL_BACKENDS: tuple[str, ...] = ("hotcoco", "pycocotools")
DEFAULT_COCO_EVAL_BACKEND = COCO_EVAL_BACKENDS[0]
BACKEND_KEY = "TEST.COCO_EVAL_BACKEND"

logger = logging.getLogger(__name__)


class CocoEvalResult(NamedTuple):
    """stats: (12,) the summary numbers in pycocotools' order (-1: no ground truth in that
    range); precision: (T, R, K, A, M) pycocotools' eval["precision"] (IoU thresholds, recall
    points, categories, area ranges, max detections; -1 where undefined); category_ids: (K,)
    json ids in the precision's order; summary: the 12 lines pycocotools prints."""

    stats: np.ndarray
    precision: np.ndarray
    category_ids: list
    summary: str


def check_coco_eval_backend(name: Any, key: str = BACKEND_KEY) -> str:
    """`name` when it is one of COCO_EVAL_BACKENDS; else a ValueError naming `key`."""
    if name not in COCO_EVAL_BACKENDS:
        raise ValueError(
            f"{key} is {name!r}; expected one of {', '.join(map(repr, COCO_EVAL_BACKENDS))} "
            "(pycocotools: the reference; hotcoco: the same figures, faster)"
        )
    return name


def _check_backend_cfg(cfg) -> None:
    check_coco_eval_backend(cfg.TEST.COCO_EVAL_BACKEND)


# A misspelt backend is an error when the config is validated, before anything runs.
register_config_check(BACKEND_KEY, _check_backend_cfg)


@functools.cache
def _hotcoco_import_error() -> str | None:
    try:
        import hotcoco  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


@functools.cache
def _warn_fallback(reason: str) -> None:
    logger.warning(
        "%s is 'hotcoco' but hotcoco cannot be imported (%s): evaluating with pycocotools, "
        "which gives the same figures more slowly. Install it (pip install -r requirements.txt) "
        "or set %s pycocotools to silence this warning.",
        BACKEND_KEY,
        reason,
        BACKEND_KEY,
    )


def usable_backend(name: Any, key: str = BACKEND_KEY) -> str:
    """The backend that will run for the configured `name`: `name` itself, or pycocotools when
    `name` is hotcoco and hotcoco cannot be imported (warned about once per process)."""
    check_coco_eval_backend(name, key)
    reason = _hotcoco_import_error() if name == "hotcoco" else None
    if reason is not None:
        _warn_fallback(reason)
        return "pycocotools"
    return name


def coco_dataset_dict(coco_gt: Any) -> dict:
    """The COCO json dict of `coco_gt`: a dict itself or an object with `.dataset` (pycocotools)."""
    return coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset


def run_coco_eval(
    backend: str, coco_gt: Any, results: np.ndarray, image_ids: list[int]
) -> CocoEvalResult:
    """COCO bbox evaluation of `results` on the images `image_ids` with `backend`.

    Args:
        coco_gt: the ground truth: a COCO json dict (load_coco_json's) or a pycocotools COCO.
        results: (D, 7) float64 rows [image_id, x, y, w, h, score, category_id] (pycocotools'
            array form of a results file), D >= 1.
    """
    run = _run_hotcoco if usable_backend(backend) == "hotcoco" else _run_pycocotools
    return run(coco_gt, results, image_ids)


def _summary(evaluator) -> str:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluator.summarize()
    return text.getvalue().rstrip()


def _run_pycocotools(coco_gt: Any, results: np.ndarray, image_ids: list[int]) -> CocoEvalResult:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        if isinstance(coco_gt, dict):
            gt, coco_gt = coco_gt, COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
    summary = _summary(evaluator)
    return CocoEvalResult(
        np.asarray(evaluator.stats, dtype=np.float64),
        np.asarray(evaluator.eval["precision"]),
        list(evaluator.params.catIds),
        summary,
    )


def _run_hotcoco(coco_gt: Any, results: np.ndarray, image_ids: list[int]) -> CocoEvalResult:
    import hotcoco

    gt = hotcoco.COCO(coco_dataset_dict(coco_gt))
    evaluator = hotcoco.COCOeval(gt, gt.load_res(results), "bbox")
    evaluator.params.img_ids = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    summary = _summary(evaluator)
    accumulated = evaluator.eval
    assert accumulated is not None  # set by accumulate()
    return CocoEvalResult(
        np.asarray(evaluator.stats, dtype=np.float64),
        np.asarray(accumulated["precision"]),
        list(evaluator.params.cat_ids),
        summary,
    )

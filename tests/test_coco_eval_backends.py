"""The COCO evaluation backends: hotcoco (the default of TEST.COCO_EVAL_BACKEND) gives
pycocotools' figures, the reference, to 1e-6 on a set built to reach every branch of the metric;
the fallback to pycocotools where hotcoco is missing; the key's checks; the results array and
file against a per-detection reference."""

import copy
import json
import logging
import sys

import numpy as np
import pytest
import torch
from helpers.bad_data import good_files, loader_cfg, write_set
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from drdet.config import get_cfg
from drdet.data import build_data_loader
from drdet.evaluation import coco_backends
from drdet.evaluation.coco_backends import COCO_EVAL_BACKENDS, check_coco_eval_backend
from drdet.evaluation.coco_evaluation import (
    coco_evaluator,
    evaluate_coco,
    predictions_to_array,
    predictions_to_coco_results,
    results_json,
)

CATEGORIES = [1, 2, 5, 9]  # 9 has no ground truth
# COCO's area ranges: small < 32^2 <= medium < 96^2 <= large (pixels^2)
SIDES = (12.0, 50.0, 150.0)


def _ground_truth(rng):
    """30 images of 400 x 300: boxes of every area range, crowd boxes, images without boxes."""
    images, anns = [], []
    for image_id in range(1, 31):
        images.append({"id": image_id, "width": 400, "height": 300, "file_name": f"{image_id}.jpg"})
        if image_id % 10 == 0:
            continue  # no ground truth at all
        for k in range(int(rng.integers(2, 9))):
            side = SIDES[k % 3] * rng.uniform(0.8, 1.2)
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 300 - h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORIES[:3])),
                    "bbox": [x, y, w, h],
                    "area": w * h * rng.uniform(0.6, 1.0),  # a segment's area, not the box's
                    "iscrowd": int(rng.random() < 0.12),
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in CATEGORIES]
    return {"images": images, "annotations": anns, "categories": cats}


def _predictions(gt, rng):
    """Per image: jittered ground-truth boxes (also over crowd boxes) and random boxes of every
    size; 150 detections on images 1-3 (more than the 100 that count), none on 4, 5 and 20."""
    json_to_label = {c: i + 1 for i, c in enumerate(CATEGORIES)}
    preds = {}
    for img in gt["images"]:
        n = 0 if img["id"] in (4, 5, 20) else (150 if img["id"] <= 3 else int(rng.integers(5, 40)))
        own = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        rows = []
        for k in range(n):
            if own and k % 2 == 0:
                a = own[k // 2 % len(own)]
                x, y, w, h = np.array(a["bbox"]) * rng.normal(1.0, 0.06, 4)
                cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice(CATEGORIES))
            else:
                side = SIDES[k % 3] * rng.uniform(0.5, 1.5)
                x, y, w, h = rng.uniform(0, 300), rng.uniform(0, 200), side, side
                cat = int(rng.choice(CATEGORIES))
            rows.append([x, y, x + w, y + h, rng.random(), json_to_label[cat]])
        rows = np.array(rows, dtype=np.float64).reshape(-1, 6)
        preds[img["id"]] = {
            "boxes": torch.tensor(rows[:, :4], dtype=torch.float32),
            "scores": torch.tensor(rows[:, 4], dtype=torch.float32),
            "labels": torch.tensor(rows[:, 5], dtype=torch.int64),
        }
    return preds, {v: k for k, v in json_to_label.items()}


def _reference(gt, preds, contiguous_to_json):
    """pycocotools on the results list built one detection at a time."""
    results = [
        {
            "image_id": image_id,
            "category_id": contiguous_to_json[label],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        for image_id, p in preds.items()
        for (x1, y1, x2, y2), score, label in zip(
            p["boxes"].double().tolist(), p["scores"].double().tolist(), p["labels"].tolist()
        )
    ]
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")  # loadRes adds keys
    ev.params.imgIds = sorted(preds)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev, results


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    gt = _ground_truth(rng)
    preds, contiguous_to_json = _predictions(gt, rng)
    ev, results = _reference(gt, preds, contiguous_to_json)
    return gt, preds, contiguous_to_json, ev, results


def test_the_case_reaches_every_branch(case):
    gt, preds, _, ev, _ = case
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert max(len(p["scores"]) for p in preds.values()) > 100
    assert sum(len(p["scores"]) == 0 for p in preds.values()) >= 3
    assert 9 not in {a["category_id"] for a in gt["annotations"]}
    # every area range has ground truth, and every summary number is defined and not trivial
    assert all(0.0 < s < 1.0 for s in ev.stats), ev.stats


@pytest.mark.parametrize("backend", COCO_EVAL_BACKENDS)
def test_backend_equals_pycocotools(case, backend):
    gt, preds, contiguous_to_json, ev, _ = case
    results = predictions_to_array(preds, contiguous_to_json)
    out = coco_backends.run_coco_eval(backend, json.loads(json.dumps(gt)), results, sorted(preds))
    np.testing.assert_allclose(out.stats, ev.stats, rtol=0, atol=1e-6)
    assert out.category_ids == list(ev.params.catIds) == CATEGORIES
    np.testing.assert_allclose(out.precision, ev.eval["precision"], rtol=0, atol=1e-6)
    metrics = evaluate_coco(gt, preds, contiguous_to_json, per_category=True, backend=backend)
    for k, cat in enumerate(CATEGORIES):
        p = ev.eval["precision"][:, :, k, 0, -1]
        expected = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        assert metrics[f"AP-c{cat}"] == pytest.approx(expected, abs=1e-6, nan_ok=True), cat
    assert np.isnan(metrics["AP-c9"])  # no ground truth


def test_results_array_and_file_match_a_per_detection_reference(case, tmp_path):
    _, preds, contiguous_to_json, _, reference = case
    results = predictions_to_array(preds, contiguous_to_json)
    assert results.shape == (len(reference), 7)
    assert predictions_to_coco_results(preds, contiguous_to_json) == reference
    assert results_json(results) == json.dumps(reference)
    assert json.loads(results_json(results[:0])) == []


def test_backend_key_is_checked_and_named():
    assert check_coco_eval_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match=r"TEST\.COCO_EVAL_BACKEND is 'pycoco'; expected one of"):
        check_coco_eval_backend("pycoco")
    assert get_cfg().TEST.COCO_EVAL_BACKEND == "hotcoco"


def test_missing_hotcoco_falls_back_to_pycocotools_with_one_warning(case, monkeypatch, caplog):
    gt, preds, contiguous_to_json, ev, _ = case
    monkeypatch.setitem(sys.modules, "hotcoco", None)  # import hotcoco raises ImportError
    coco_backends._hotcoco_import_error.cache_clear()
    coco_backends._warn_fallback.cache_clear()
    caplog.set_level(logging.INFO)
    try:
        for _ in range(2):
            metrics = evaluate_coco(gt, preds, contiguous_to_json, backend="hotcoco")
            assert metrics["AP"] == pytest.approx(ev.stats[0], abs=1e-6)
    finally:
        coco_backends._hotcoco_import_error.cache_clear()
        coco_backends._warn_fallback.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TEST.COCO_EVAL_BACKEND" in warnings[0], warnings
    assert "hotcoco cannot be imported" in warnings[0]
    assert caplog.text.count("COCO bbox evaluation (pycocotools)") == 2


@pytest.mark.parametrize("backend", COCO_EVAL_BACKENDS)
def test_the_config_key_reaches_the_evaluator_of_a_test_set(tmp_path, backend, caplog):
    ann, img_dir = write_set(tmp_path, good_files(3))  # one 20 x 16 box per image
    cfg = loader_cfg(ann, img_dir)
    cfg.TEST.COCO_EVAL_BACKEND = backend
    dataset = build_data_loader(cfg, is_train=False).dataset
    assert dataset.coco_eval_backend == backend
    perfect = {
        i: {"boxes": torch.tensor([[4.0, 4, 24, 20]]), "scores": torch.ones(1), "labels": [1]}
        for i in dataset.ids
    }
    caplog.set_level(logging.INFO)
    assert coco_evaluator(dataset, perfect)["AP"] == pytest.approx(1.0)
    assert f"COCO bbox evaluation ({backend})" in caplog.text
    dataset.coco_eval_backend = "fast"
    with pytest.raises(ValueError, match="TEST.COCO_EVAL_BACKEND is 'fast'"):
        coco_evaluator(dataset, perfect)


def test_the_config_default_is_the_library_default_and_a_typo_stops_validation():
    from drdet.config import get_cfg, validate_cfg
    from drdet.evaluation import DEFAULT_COCO_EVAL_BACKEND

    assert get_cfg().TEST.COCO_EVAL_BACKEND == DEFAULT_COCO_EVAL_BACKEND
    cfg = get_cfg()
    cfg.merge_from_list(["TEST.COCO_EVAL_BACKEND", "pycoco"])
    with pytest.raises(ValueError, match="TEST.COCO_EVAL_BACKEND"):
        validate_cfg(cfg)

import copy
import logging

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from drdet.evaluation import (
    evaluate_coco,
    evaluate_voc,
    gather_predictions,
    merge_predictions,
    predictions_to_coco_results,
    voc_ap,
)

# Non-contiguous json category ids 1, 3, 7 <-> contiguous labels 1, 2, 3.
CONTIGUOUS_TO_JSON = {1: 1, 2: 3, 3: 7}
# Per image: (json category id, x1, y1, x2, y2); 40x40 boxes (medium) and one 120x100 (large).
GT_BOXES = {
    1: [(1, 10, 10, 50, 50), (3, 60, 20, 100, 60)],
    2: [(7, 5, 5, 45, 45), (1, 100, 80, 220, 180)],
    3: [(3, 30, 30, 70, 70)],
}


def _coco_gt():
    dataset = {
        "images": [
            {"id": i, "width": 256, "height": 256, "file_name": f"{i}.jpg"} for i in GT_BOXES
        ],
        "categories": [{"id": c, "name": n} for c, n in [(1, "cat"), (3, "dog"), (7, "bird")]],
        "annotations": [],
    }
    for image_id, boxes in GT_BOXES.items():
        for cat, x1, y1, x2, y2 in boxes:
            dataset["annotations"].append(
                {
                    "id": len(dataset["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    coco.createIndex()
    return coco


def _perfect_predictions(shift=0.0):
    """The ground truth boxes, moved right by `shift` times their width."""
    json_to_contiguous = {v: k for k, v in CONTIGUOUS_TO_JSON.items()}
    preds = {}
    for image_id, boxes in GT_BOXES.items():
        b = torch.tensor(
            [
                [x1 + shift * (x2 - x1), y1, x2 + shift * (x2 - x1), y2]
                for _, x1, y1, x2, y2 in boxes
            ]
        )
        preds[image_id] = {
            "boxes": b,
            "scores": torch.full((len(boxes),), 0.9),
            "labels": torch.tensor([json_to_contiguous[c] for c, *_ in boxes]),
        }
    return preds


def test_perfect_predictions_give_ap_one(tmp_path):
    metrics = evaluate_coco(
        _coco_gt(),
        _perfect_predictions(),
        CONTIGUOUS_TO_JSON,
        output_folder=str(tmp_path),
        per_category=True,
    )
    for key in ("AP", "AP50", "AP75", "APm", "APl", "AP-cat", "AP-dog", "AP-bird"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["APs"] == -1.0  # no small ground truth: pycocotools' "undefined"
    assert (tmp_path / "bbox.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bbox.json"]


def test_shifted_boxes_iou_two_thirds():
    # Every box moved right by 1/5 of its width: IoU = (4/5) / (6/5) = 2/3, so every detection
    # matches at IoU thresholds .50, .55, .60, .65 and none from .70 up: AP = 4/10.
    preds = _perfect_predictions(shift=0.2)
    metrics = evaluate_coco(_coco_gt(), preds, CONTIGUOUS_TO_JSON, per_category=True)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    for key in ("AP", "APm", "APl", "AP-cat", "AP-dog", "AP-bird"):
        assert metrics[key] == pytest.approx(0.4), key
    assert metrics == pytest.approx(_direct_cocoeval(preds), nan_ok=True)


def _direct_cocoeval(preds):
    coco_gt = _coco_gt()
    results = []
    for image_id, p in preds.items():
        for (x1, y1, x2, y2), s, l in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CONTIGUOUS_TO_JSON[l],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    out = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], map(float, ev.stats[:6])))
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        out["AP-" + coco_gt.cats[cat]["name"]] = float(p[p > -1].mean())
    return out


def test_random_predictions_match_pycocotools():
    g = torch.Generator().manual_seed(1)
    preds = {}
    for image_id in GT_BOXES:
        k = 6
        xy = torch.rand(k, 2, generator=g) * 150
        wh = 20 + torch.rand(k, 2, generator=g) * 100
        preds[image_id] = {
            "boxes": torch.cat([xy, xy + wh], 1),
            "scores": torch.rand(k, generator=g),
            "labels": torch.randint(1, 4, (k,), generator=g),
        }
    # add the true boxes at low scores so that AP is neither 0 nor 1
    for image_id, p in _perfect_predictions(shift=0.05).items():
        for key in ("boxes", "scores", "labels"):
            extra = p[key] * (0.5 if key == "scores" else 1)
            preds[image_id][key] = torch.cat([preds[image_id][key], extra])
    metrics = evaluate_coco(_coco_gt(), preds, CONTIGUOUS_TO_JSON, per_category=True)
    assert 0.0 < metrics["AP"] < 1.0
    assert metrics == pytest.approx(_direct_cocoeval(preds), nan_ok=True)


def test_category_id_mapping_round_trip():
    preds = {
        1: {
            "boxes": np.array([[1.0, 2.0, 11.0, 22.0]]),
            "scores": np.array([0.5]),
            "labels": np.array([2]),
        },
        3: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)},
    }
    results = predictions_to_coco_results(preds, CONTIGUOUS_TO_JSON)
    assert results == [
        {"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}
    ]
    json_to_contiguous = {v: k for k, v in CONTIGUOUS_TO_JSON.items()}
    assert [json_to_contiguous[r["category_id"]] for r in results] == [2]
    # A wrong map (labels shifted by one class) must ruin the AP of the right boxes.
    wrong = {1: 3, 2: 7, 3: 1}
    assert evaluate_coco(_coco_gt(), _perfect_predictions(), wrong)["AP"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"labels \[4\]"):
        predictions_to_coco_results(
            {1: {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.array([4])}},
            CONTIGUOUS_TO_JSON,
        )


def test_empty_predictions_give_zero(tmp_path):
    empty = {
        i: {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
        for i in GT_BOXES
    }
    metrics = evaluate_coco(
        _coco_gt(), empty, CONTIGUOUS_TO_JSON, output_folder=str(tmp_path), per_category=True
    )
    assert all(v == 0.0 for v in metrics.values()) and "AP-bird" in metrics
    assert (tmp_path / "bbox.json").read_text() == "[]"


def test_bad_predictions_are_errors():
    bad = {1: {"boxes": torch.zeros(2, 4), "scores": torch.zeros(3), "labels": torch.ones(2)}}
    with pytest.raises(ValueError, match="image 1"):
        evaluate_coco(_coco_gt(), bad, CONTIGUOUS_TO_JSON)
    with pytest.raises(ValueError, match=r"\[99\]"):
        evaluate_coco(_coco_gt(), {99: _perfect_predictions()[1]}, CONTIGUOUS_TO_JSON)


def test_summary_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="drdet.evaluation.coco_evaluation"):
        evaluate_coco(_coco_gt(), _perfect_predictions(), CONTIGUOUS_TO_JSON)
    text = caplog.text
    assert text.count("Average Precision") == 6 and text.count("Average Recall") == 6


def test_merge_predictions_checks_each_image_once():
    a, b = {1: "p1", 3: "p3"}, {2: "p2"}
    assert merge_predictions([a, b], [1, 2, 3]) == {1: "p1", 2: "p2", 3: "p3"}
    with pytest.raises(RuntimeError, match=r"no prediction entry \(first: \[3\]\)"):
        merge_predictions([{1: "p1"}, b], [1, 2, 3])
    with pytest.raises(RuntimeError, match=r"more than once \(first: \[1\]\)"):
        merge_predictions([a, {1: "p1", 2: "p2"}], [1, 2, 3])
    with pytest.raises(RuntimeError, match="not in the dataset"):
        merge_predictions([a, {2: "p2", 9: "p9"}], [1, 2, 3])
    # one process: gather returns the checked predictions
    assert gather_predictions({1: {"x": torch.ones(1)}}, [1])[1]["x"].item() == 1.0


def test_voc_ap_hand_computed():
    # One class; image 1 has a normal and a difficult box, image 2 one box: 2 positives.
    gt = {
        1: {
            "boxes": [[0, 0, 10, 10], [20, 20, 30, 30]],
            "labels": [1, 1],
            "difficult": [False, True],
        },
        2: {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [1, 3], "difficult": [0, 0]},
    }
    preds = {
        1: {
            "boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]],
            "scores": [0.9, 0.7, 0.5],
            "labels": [1, 1, 1],
        },
        2: {"boxes": [[5, 5, 15, 15], [0, 0, 10, 10]], "scores": [0.8, 0.6], "labels": [1, 1]},
    }
    # score order: .9 TP, .8 FP (IoU 25/175), .7 difficult (ignored), .6 TP, .5 FP (duplicate)
    # recall    .5  .5  .5   1   1 ; precision 1  1/2  1/2  2/3  1/2
    ap07 = (6 * 1.0 + 5 * (2 / 3)) / 11
    area = 0.5 * 1.0 + 0.5 * (2 / 3)
    out07 = evaluate_voc(preds, gt, num_classes=4, use_07_metric=True)
    out = evaluate_voc(preds, gt, num_classes=4, use_07_metric=False)
    assert out07["ap"][1] == pytest.approx(ap07)
    assert out["ap"][1] == pytest.approx(area)
    assert np.isnan(out["ap"][2])  # no ground truth of class 2
    assert out["ap"][3] == 0.0  # ground truth, no detection
    assert out07["mAP"] == pytest.approx(ap07 / 2)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=False) == pytest.approx(
        0.75
    )

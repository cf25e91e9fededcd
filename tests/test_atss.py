"""ATSS's parts against independent references: the assignment against a plain Python loop
written here (random boxes, several images with padding rows) and against hand-counted cases
(a box smaller than every anchor, a box between two levels, two boxes claiming one anchor, an
image with no box, a crowd box); the anchors; the head's layout; the losses against a hand
computation with torchvision's GIoU and the DR loss's float64 reference; the config plumbing;
and the detector with the Predictor, the multi-scale test and the score figure."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers.bad_data import good_files, write_set
from helpers.dr_loss import reference as dr_reference
from helpers.tiny import RecordingLoss, small_detector_cfg

from drdet.config import get_cfg
from drdet.data.datasets.coco import COCODataset
from drdet.modeling import build_detector
from drdet.modeling.atss import ATSSHead, ATSSLossComputation, atss_assign, build_atss_anchors
from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DenseOutputs
from drdet.modeling.losses.dr import build_dr_loss

STRIDES = [8, 16, 32, 64, 128]


def _anchors(height=128, width=128, dtype=torch.float32):
    """ATSS's per-level anchors (the default config's) for a height x width padded batch."""
    feats = [torch.zeros(1, 1, math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    return [a.to(dtype) for a in build_atss_anchors(get_cfg(), STRIDES)(feats, (height, width))]


# ---------------------------------------------------------------- the plain loop
def _centre(b):
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def reference_assign(levels, images, topk=9):
    """ATSS as the paper states it, one box and one anchor at a time: ``levels`` lists of
    [x1, y1, x2, y2] per level, ``images`` lists of boxes per image. Returns per image the box
    index of every anchor (-1 background)."""
    flat = [a for level in levels for a in level]
    out = []
    for boxes in images:
        claims = {}  # anchor -> (IoU, box)
        for m, box in enumerate(boxes):
            bx, by = _centre(box)
            candidates, start = [], 0
            for level in levels:
                dist = [math.hypot(_centre(a)[0] - bx, _centre(a)[1] - by) for a in level]
                nearest = sorted(range(len(level)), key=lambda i: (dist[i], i))[:topk]
                candidates += [start + i for i in nearest]
                start += len(level)
            ious = [_iou(flat[a], box) for a in candidates]
            threshold = statistics.mean(ious) + statistics.stdev(ious)  # n - 1, as torch.std
            for a, value in zip(candidates, ious):
                x, y = _centre(flat[a])
                inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
                if value >= threshold and inside and (a not in claims or value > claims[a][0]):
                    claims[a] = (value, m)
        out.append([claims[a][1] if a in claims else -1 for a in range(len(flat))])
    return out


def _assign(anchors, images, dtype=torch.float32):
    """atss_assign on ``images`` (lists of boxes) padded into one batch."""
    num_max = max(len(b) for b in images)
    boxes = torch.zeros(len(images), num_max, 4, dtype=dtype)
    valid = torch.zeros(len(images), num_max, dtype=torch.bool)
    for i, b in enumerate(images):
        if b:
            boxes[i, : len(b)] = torch.tensor(b, dtype=dtype)
            valid[i, : len(b)] = True
    return atss_assign(anchors, boxes, valid).tolist()


def _random_images(rng, float_coords):
    """Three images: no box, 1-4 boxes, 3-8 boxes (the last sometimes repeating its first)."""
    images = []
    for n in (0, rng.randint(1, 4), rng.randint(3, 8)):
        boxes = []
        for _ in range(n):
            draw = rng.uniform if float_coords else rng.randint
            x1, y1, w, h = draw(-4, 120), draw(-4, 90), draw(1, 90), draw(1, 70)
            boxes.append([float(x1), float(y1), float(x1 + w), float(y1 + h)])
        if n and rng.random() < 0.3:
            boxes.append(list(boxes[0]))  # a duplicate: equal IoUs go to the first
        images.append(boxes)
    return images


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_assignment_matches_the_plain_loop_on_random_boxes(dtype):
    # a 96 x 128 batch: P6 has 4 anchors and P7 one, fewer than k = 9
    anchors = _anchors(96, 128, dtype)
    levels = [a.double().tolist() for a in anchors]
    rng = random.Random(0)
    positives = 0
    for trial in range(25):
        images = _random_images(rng, float_coords=dtype == torch.float32)
        if dtype == torch.float32:  # the loop sees the float32 values the assigner sees
            images = [torch.tensor(b).tolist() if b else [] for b in images]
        got = _assign(anchors, images, dtype)
        assert got == reference_assign(levels, images), trial
        positives += sum(m >= 0 for row in got for m in row)
    assert positives > 200  # the comparison is not one of empty assignments


def _positive_centres(matches, anchors, box):
    flat = torch.cat(anchors)
    idx = [a for a, m in enumerate(matches) if m == box]
    return sorted(_centre(flat[a].tolist()) for a in idx), idx


def test_a_box_smaller_than_every_anchor():
    anchors = _anchors()  # P3 anchors are 64 px, centred every 8 px
    # 10 x 10 around (44, 44): all 32 candidates contain the box, so their IoUs are 100 / side^2:
    # 9 x 0.0244 (P3), 9 x 0.0061 (P4), 9 x 0.0015 (P5), 4 x 0.00038 (P6), 1 x 0.0000954 (P7);
    # mean 0.00906 + std 0.00999 = 0.0191: the P3 candidates pass, and of them the four whose
    # centres (40 | 48, 40 | 48) lie inside the box are the positives.
    matches = _assign(anchors, [[[39.0, 39.0, 49.0, 49.0]]])[0]
    centres, idx = _positive_centres(matches, anchors, 0)
    assert centres == [(40, 40), (40, 48), (48, 40), (48, 48)] and max(idx) < 256
    # 6 x 6 between those centres: no anchor centre inside it, so no positive at all.
    assert set(_assign(anchors, [[[41.0, 41.0, 47.0, 47.0]]])[0]) == {-1}


def test_a_box_between_two_levels():
    anchors = _anchors()
    sides = {}
    for side in (78, 90, 98):  # squares centred on (64, 64), a P3 and P4 anchor centre
        lo, hi = 64 - side / 2, 64 + side / 2
        matches = _assign(anchors, [[[lo, lo, hi, hi]]])[0]
        sides[side] = sorted(a // 256 for a, m in enumerate(matches) if m == 0)  # 0: P3
    # 78 px: nearer the P3 anchors (64 px): their 3 x 3 block at (56 | 64 | 72)^2.
    assert sides[78] == [0] * 9
    # 98 px: nearer the P4 anchors (128 px): their 3 x 3 block (P4 rows start at index 256).
    assert sides[98] == [1] * 9
    # 90 px ~ sqrt(64 x 128): IoU 4096 / 8100 = 0.506 for the 9 P3 candidates, 8100 / 16384
    # = 0.494 for the 9 P4 ones (each contains or is contained), 0.124 (P5, 9), 0.031 (P6, 4),
    # 0.0077 (P7, 1): mean 0.320 + unbiased std 0.210 = 0.530 > 0.506: no positive.
    assert sides[90] == []


def test_two_boxes_claiming_one_anchor():
    anchors = _anchors()
    first, second = [25.0, 25.0, 103.0, 103.0], [33.0, 33.0, 111.0, 111.0]  # 78 px, 8 px apart
    alone = [_positive_centres(_assign(anchors, [[b]])[0], anchors, 0)[0] for b in (first, second)]
    assert alone[0] == [(x, y) for x in (56, 64, 72) for y in (56, 64, 72)]
    assert alone[1] == [(x, y) for x in (64, 72, 80) for y in (64, 72, 80)]
    # Both claim (64 | 72, 64 | 72). IoU of the anchor at (64, 64) [32, 96]^2: with the first
    # box 4096 / 6084 = 0.673, with the second 63^2 / 6211 = 0.639, so it goes to the first;
    # (72, 72) to the second by symmetry; (64, 72) and (72, 64) have 4032 / 6148 with both:
    # the box listed first takes them.
    matches = _assign(anchors, [[first, second]])[0]
    got = [_positive_centres(matches, anchors, m)[0] for m in (0, 1)]
    assert got[0] == sorted(set(alone[0]) - {(72, 72)})
    assert got[1] == sorted(set(alone[1]) - {(64, 64), (64, 72), (72, 64)})
    swapped = _assign(anchors, [[second, first]])[0]
    assert _positive_centres(swapped, anchors, 0)[0] == sorted(set(alone[1]) - {(64, 64)})


def test_images_without_boxes_and_padding_rows():
    anchors = _anchors()
    boxes = torch.tensor([[[25.0, 25.0, 103.0, 103.0]], [[0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True], [False]])  # image 1 has no box: one padding row
    matches = atss_assign(anchors, boxes, valid)
    assert (matches[0] == 0).sum() == 9 and (matches[1] == -1).all()
    none = atss_assign(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert none.shape == (2, sum(a.shape[0] for a in anchors)) and (none == -1).all()


def test_a_crowd_box_makes_no_positive(tmp_path):
    # The COCO reader leaves crowd boxes out of the training targets: an image with a normal
    # box and a crowd box reaches the loss with the normal box only.
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 10, 30, 30], "iscrowd": 1},
    ]
    ann, images = write_set(tmp_path, good_files(1), anns)
    target = COCODataset(ann, images, remove_images_without_annotations=True)[0][1]
    assert target["boxes"].tolist() == [[2.0, 2.0, 22.0, 22.0]]
    crowd = [30.0, 10.0, 60.0, 40.0]
    anchors = _anchors(64, 64)
    loss = ATSSLossComputation(BoxCoder(), 1, cls_loss=lambda logits, labels, norm: logits.sum())
    labels = loss.labels(anchors, [target])[0]
    centres = [_centre(a) for a in torch.cat(anchors)[labels > 0].tolist()]
    assert centres and all(2 < x < 22 and 2 < y < 22 for x, y in centres)
    # had it reached the loss as a box, the crowd box would have made positives
    assert set(reference_assign([a.tolist() for a in anchors], [[crowd]])[0]) == {-1, 0}


# ---------------------------------------------------------------- anchors and head
def test_one_square_anchor_of_eight_strides_per_location():
    anchors = _anchors(64, 96)
    assert [a.shape[0] for a in anchors] == [8 * 12, 4 * 6, 2 * 3, 1 * 2, 1]
    assert anchors[0][:2].tolist() == [[-32, -32, 32, 32], [-24, -32, 40, 32]]  # row-major
    assert anchors[1][6].tolist() == [-64, -48, 64, 80]  # P4 row 1, column 0: centre (0, 16)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.ATSS.ANCHOR_SCALE", 4.0])
    p4 = build_atss_anchors(cfg, STRIDES)([torch.zeros(1, 1, 1, 1)] * 5, (16, 16))[1]
    assert p4.tolist() == [[-32, -32, 32, 32]]


def test_head_layout_and_initialisation():
    torch.manual_seed(0)
    head = ATSSHead(16, num_classes=3, num_levels=2, num_convs=1, gn_groups=4, prior_prob=0.2)
    names = {k.rsplit(".", 1)[0] for k in head.state_dict()}
    assert names == {
        "cls_tower.0",
        "cls_tower.1",
        "bbox_tower.0",
        "bbox_tower.1",
        "cls_logits",
        "bbox_pred",
        "centerness",
        "scales",
    }
    assert torch.allclose(head.cls_logits.bias, torch.full((3,), -math.log(0.8 / 0.2)))
    with torch.no_grad():
        head.scales.copy_(torch.tensor([2.0, 0.5]))
    features = [torch.randn(2, 16, 3, 5), torch.randn(2, 16, 2, 3)]
    out = head.eval()(features)
    for level, (f, scale) in enumerate(zip(features, (2.0, 0.5))):
        box_tower = head.bbox_tower(f)
        cls = head.cls_logits(head.cls_tower(f))
        deltas, ctr = head.bbox_pred(box_tower) * scale, head.centerness(box_tower)
        y, x = 1, 2  # row y * W + x of the level
        row = y * f.shape[-1] + x
        torch.testing.assert_close(out.cls_logits[level][:, row], cls[:, :, y, x])
        torch.testing.assert_close(out.box_regression[level][:, row], deltas[:, :, y, x])
        torch.testing.assert_close(out.centerness[level][:, row], ctr[:, 0, y, x])
        assert out.cls_logits[level].shape == (2, f.shape[-2] * f.shape[-1], 3)
    with pytest.raises(ValueError, match="3 feature maps for 2 levels"):
        head(features + features[:1])


# ---------------------------------------------------------------- losses
def _outputs(anchors, num_images=2, num_classes=3, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    n = [a.shape[0] for a in anchors]
    outputs = DenseOutputs(
        [torch.randn(num_images, k, num_classes, generator=g) for k in n],
        [torch.randn(num_images, k, 4, generator=g) * 0.5 for k in n],
        [torch.randn(num_images, k, generator=g) for k in n],
    )
    for t in outputs.cls_logits + outputs.box_regression + outputs.centerness:
        t.requires_grad_(requires_grad)
    return outputs


def _decode(d, a):
    """(dx, dy, dw, dh) with weights (10, 10, 5, 5) against anchor a, written out."""
    w, h = a[2] - a[0], a[3] - a[1]
    cx, cy = a[0] + w / 2 + d[0] / 10 * w, a[1] + h / 2 + d[1] / 10 * h
    pw, ph = math.exp(d[2] / 5) * w, math.exp(d[3] / 5) * h
    return [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]


def test_losses_by_hand():
    anchors = _anchors()
    outputs = _outputs(anchors)
    recorder = RecordingLoss()
    loss = ATSSLossComputation(BoxCoder(), 3, recorder, reg_loss_weight=2.0)
    box = [25.0, 25.0, 103.0, 103.0]
    targets = [
        {"boxes": torch.tensor([box]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    out = loss(anchors, outputs, targets)
    labels, normalizer = recorder.calls[0]
    flat = torch.cat(anchors).tolist()
    rows = [a for a, (x, y) in enumerate(map(_centre, flat)) if a < 256 and {x, y} <= {56, 64, 72}]
    expected = torch.zeros(2, len(flat), dtype=torch.int64)
    expected[0, rows] = 2
    assert torch.equal(labels, expected) and normalizer == 9.0
    deltas = torch.cat(outputs.box_regression, 1)[0]
    ctr_logits = torch.cat(outputs.centerness, 1)[0]
    weighted, weights, bce = 0.0, 0.0, 0.0
    for a in rows:
        pred = torch.tensor([_decode(deltas[a].tolist(), flat[a])], dtype=torch.float64)
        giou = torchvision.ops.generalized_box_iou(pred, torch.tensor([box]).double())
        x, y = _centre(flat[a])
        l_, t_, r_, b_ = x - box[0], y - box[1], box[2] - x, box[3] - y
        w = math.sqrt(min(l_, r_) / max(l_, r_) * min(t_, b_) / max(t_, b_))
        weighted, weights = weighted + w * (1 - float(giou)), weights + w
        p = 1 / (1 + math.exp(-float(ctr_logits[a])))
        bce -= w * math.log(p) + (1 - w) * math.log(1 - p)
    assert out["loss_reg"].item() == pytest.approx(2.0 * weighted / weights, rel=1e-5)
    assert out["loss_centerness"].item() == pytest.approx(bce / 9, rel=1e-5)


def test_a_batch_without_boxes_still_backpropagates():
    anchors = _anchors(64, 64)
    outputs = _outputs(anchors, requires_grad=True)
    recorder = RecordingLoss()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = ATSSLossComputation(BoxCoder(), 3, recorder)(anchors, outputs, [empty, empty])
    labels, normalizer = recorder.calls[0]
    assert (labels == 0).all() and normalizer == 1.0  # at least 1
    assert out["loss_reg"].item() == 0.0 and out["loss_centerness"].item() == 0.0
    sum(out.values()).backward()
    bad = {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="image 1 of the batch.*degenerate"):
        ATSSLossComputation(BoxCoder(), 3, recorder)(anchors, outputs, [empty, bad])


def test_dr_loss_on_atss_ranks_the_anchor_class_entries_of_each_image():
    cfg = get_cfg()
    anchors = _anchors()
    outputs = _outputs(anchors, seed=3)
    loss = ATSSLossComputation(BoxCoder(), 3, build_dr_loss(cfg))
    targets = [
        {"boxes": torch.tensor([[25.0, 25.0, 103.0, 103.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[39.0, 39.0, 49.0, 49.0]]), "labels": torch.tensor([3])},
    ]
    labels = loss.labels(anchors, targets)
    assert (labels > 0).sum(1).tolist() == [9, 4]  # the hand-counted cases above
    logits = torch.cat(outputs.cls_logits, 1)
    groups = torch.arange(2).repeat_interleave(logits.shape[1])
    d = cfg.MODEL.DR_LOSS
    expected = dr_reference(
        logits.reshape(-1, 3), labels.reshape(-1), groups, 2, d.POS_LAMBDA, d.NEG_LAMBDA
    )
    got = loss(anchors, outputs, targets)["loss_cls"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- config and detector
def _cfg(*overrides):
    return small_detector_cfg(
        "MODEL.META_ARCHITECTURE",
        "ATSS",
        "MODEL.FPN.USE_C5",
        False,
        "MODEL.GROUP_NORM.NUM_GROUPS",
        8,
        "INPUT.MIN_SIZE_TEST",
        96,
        "INPUT.MAX_SIZE_TEST",
        128,
        *overrides,
        node="MODEL.ATSS",
    )


def test_each_loss_brings_its_prior_to_atss():
    assert _cfg("MODEL.ATSS.LOSS_TYPE", "DR").MODEL.ATSS.PRIOR_PROB == 0.5
    assert _cfg("MODEL.ATSS.LOSS_TYPE", "FOCAL").MODEL.ATSS.PRIOR_PROB == 0.01
    kept = _cfg("MODEL.ATSS.LOSS_TYPE", "DR", "MODEL.ATSS.PRIOR_PROB", 0.3).MODEL.ATSS
    assert kept.PRIOR_PROB == 0.3 and kept.INFERENCE_TH == 0.05 and kept.NMS_TH == 0.6


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.ATSS.LOSS_TYPE", "NOPE"),
        ("MODEL.ATSS.TOPK", 0),
        ("MODEL.ATSS.ANCHOR_SCALE", 0.0),
        ("MODEL.ATSS.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0)),
        ("MODEL.ATSS.PRIOR_PROB", 1.0),
        ("MODEL.ATSS.REG_LOSS_WEIGHT", -1.0),
        ("MODEL.ATSS.INFERENCE_TH", 1.0),
        ("MODEL.ATSS.NMS_TH", 1.5),
        ("MODEL.ATSS.PRE_NMS_TOP_N", 0),
        ("MODEL.ATSS.NUM_CONVS", -1),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _cfg(key, value)


def _images():
    return [torch.rand(3, 96, 128) * 255, torch.rand(3, 128, 96) * 255]


@pytest.mark.parametrize("loss_type", ["FOCAL", "DR"])
def test_detector_trains_and_predicts(loss_type):
    torch.manual_seed(0)
    model = build_detector(_cfg("MODEL.ATSS.LOSS_TYPE", loss_type)).train()
    assert type(model).__name__ == "ATSS" and model.head.scales.shape == (5,)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[10.0, 8.0, 50.0, 90.0]]), "labels": torch.tensor([3])},
    ]
    losses = model(_images(), targets)
    assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_reg"] > 0
    sum(losses.values()).backward()
    assert model.head.scales.grad is not None and model.head.scales.grad.abs().sum() > 0
    with torch.no_grad():
        dets = model.eval()(_images(), original_sizes=[(192, 256), (128, 96)])
    assert len(dets) == 2 and all(0 < len(d["scores"]) <= 100 for d in dets)


def test_predictor_and_multi_scale_test_on_atss(tmp_path):
    from drdet.engine.predictor import Predictor
    from drdet.engine.test_time_augmentation import BBoxAug

    torch.manual_seed(1)
    first = Predictor(_cfg())
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": first.model.state_dict(), "iteration": 1}, path)
    second = Predictor(_cfg("MODEL.WEIGHT", path))  # strict load of every ATSS key
    image = (np.random.RandomState(0).rand(150, 200, 3) * 255).astype(np.uint8)
    out = second(image)
    resized = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1).float()[None], size=(96, 128), mode="bilinear"
    )[0]
    with torch.no_grad():
        plain = first.model([resized])[0]
        flipped = first.model([resized.flip(-1)])[0]
    assert len(plain["scores"]) > 0
    scale = torch.tensor([200 / 128, 150 / 96] * 2)
    torch.testing.assert_close(out["boxes"], plain["boxes"] * scale)
    torch.testing.assert_close(out["scores"], plain["scores"])
    # The multi-scale test with the flip merges both at ATSS's own NMS threshold (0.6).
    aug = BBoxAug((96,), 1000, True, None, 100)(first.model, [resized], [{"orig_size": (96, 128)}])
    back = flipped["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
        [128, 0, 128, 0]
    )
    boxes = torch.cat([plain["boxes"], back])
    scores = torch.cat([plain["scores"], flipped["scores"]])
    labels = torch.cat([plain["labels"], flipped["labels"]])
    keep = torchvision.ops.batched_nms(boxes, scores, labels, 0.6)[:100]
    torch.testing.assert_close(aug[0]["boxes"], boxes[keep])
    torch.testing.assert_close(aug[0]["scores"], scores[keep])


def test_score_figure_takes_the_assigned_anchors_class_scores():
    from drdet.engine.score_distribution import anchor_scores

    model = build_detector(_cfg()).eval()
    image = torch.rand(3, 128, 128) * 255
    # the hand-counted 10-px box: its positives are the P3 anchors at (40 | 48, 40 | 48), i.e.
    # cells (5 | 6, 5 | 6) of the 16 x 16 P3 map
    target = {"boxes": torch.tensor([[39.0, 39.0, 49.0, 49.0]]), "labels": torch.tensor([3])}
    foreground, background = anchor_scores(model, image, target)
    with torch.no_grad():
        cls_logits = model.head(model.backbone(model.preprocess([image]).tensors)).cls_logits
    cells = [i * 16 + j for i in (5, 6) for j in (5, 6)]
    torch.testing.assert_close(foreground, cls_logits[0][0, cells, 2].sigmoid())
    assert background.shape == (sum(c.shape[1] for c in cls_logits) - 4, 3)

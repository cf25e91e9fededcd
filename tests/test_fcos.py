"""FCOS's parts against hand computations: the location assignment (level ranges, ties, centre
sampling, boxes on the border, padding), centre-ness, images without boxes, the losses (the DR
loss on FCOS against a pure-PyTorch DR formula), the scores of the post-processing, and the
detector's config plumbing."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import RecordingLoss, small_detector_cfg

from drdet.config import get_cfg
from drdet.modeling import build_detector
from drdet.modeling.dense import (
    DenseOutputs,
    centerness_targets,
    centerness_weighted_logits,
    iou_loss,
)
from drdet.modeling.fcos import FCOSLossComputation, location_generator
from drdet.modeling.fcos.targets import assign_locations, level_ranges
from drdet.modeling.losses.dr import build_dr_loss

INF = math.inf


def _assign(points, sizes, ranges, boxes, radius=0.0, valid=None):
    boxes = torch.tensor(boxes, dtype=torch.float32)[None]
    valid = (
        torch.ones(boxes.shape[:2], dtype=torch.bool) if valid is None else torch.tensor([valid])
    )
    return assign_locations(
        torch.tensor(points, dtype=torch.float32),
        torch.tensor(sizes, dtype=torch.float32),
        torch.tensor(ranges, dtype=torch.float32),
        boxes,
        valid,
        radius,
    )[0]


# ---------------------------------------------------------------- assignment
def test_level_ranges():
    assert level_ranges((64, 128, 256, 512), 5) == [
        (0.0, 64.0),
        (64.0, 128.0),
        (128.0, 256.0),
        (256.0, 512.0),
        (512.0, INF),
    ]
    with pytest.raises(ValueError, match="5 levels need 4"):
        level_ranges((64, 128), 5)


def test_level_ranges_pick_the_level_of_the_box_size():
    # (16, 16) on P3 (stride 8, sizes 0-64) and (32, 32) on P4 (16, sizes 64-128).
    points, sizes, ranges = [(16, 16), (32, 32)], [8, 16], [(0, 64), (64, 128)]
    # box 60 x 60 from the corner: at (16, 16) l,t,r,b = 16,16,44,44 -> 44 in P3's range;
    # at (32, 32) 32,32,28,28 -> 32 is below P4's.
    assert _assign(points, sizes, ranges, [[0, 0, 60, 60]]).tolist() == [0, -1]
    # box 100 x 100: (16, 16) -> 84 > 64; (32, 32) -> 68 in [64, 128].
    assert _assign(points, sizes, ranges, [[0, 0, 100, 100]]).tolist() == [-1, 0]


def test_range_bounds_are_included():
    # One place seen from P3 and P4: l,t,r,b = 16,16,64,24 -> max 64, the bound of both.
    points, sizes, ranges = [(16, 16), (16, 16)], [8, 16], [(0, 64), (64, 128)]
    assert _assign(points, sizes, ranges, [[0, 0, 80, 40]]).tolist() == [0, 0]
    # 64.5: P4 only.
    assert _assign(points, sizes, ranges, [[0, 0, 80.5, 40]]).tolist() == [-1, 0]


def test_ties_go_to_the_smallest_box_then_the_first():
    points, sizes, ranges = [(20, 20), (50, 20)], [8, 8], [(0, INF), (0, INF)]
    big, small, small_too = [0, 0, 60, 40], [10, 10, 30, 30], [15, 5, 35, 25]
    # (20, 20) is in all three; the small ones have equal areas (400): the first listed wins.
    assert _assign(points, sizes, ranges, [big, small, small_too]).tolist() == [1, 0]
    assert _assign(points, sizes, ranges, [big, small_too, small]).tolist() == [1, 0]
    assert _assign(points, sizes, ranges, [small, big]).tolist() == [0, 1]


def test_center_sampling():
    # box 60 x 60 centred on (30, 30); radius 1.5 strides of 8 px: |dx|, |dy| < 12.
    points = [(16, 16), (20, 20), (41, 30), (42, 30)]
    sizes, ranges, box = [8] * 4, [(0, INF)] * 4, [[0, 0, 60, 60]]
    assert _assign(points, sizes, ranges, box, radius=0.0).tolist() == [0, 0, 0, 0]
    assert _assign(points, sizes, ranges, box, radius=1.5).tolist() == [-1, 0, 0, -1]
    # a larger stride widens the centre region: 1.5 x 16 = 24 > |16 - 30|.
    assert _assign(points, [16] * 4, ranges, box, radius=1.5).tolist() == [0, 0, 0, 0]
    # the centre region never reaches outside the box: (4, 30) is 26 px from the centre of a
    # box 8 px wide and left of it; radius 10 strides would reach it, the box does not.
    assert _assign([(4, 30)], [8], [(0, INF)], [[6, 0, 14, 60]], radius=10.0).tolist() == [-1]


def test_locations_on_the_border_are_outside():
    points = [(0, 0), (8, 8), (16, 16), (40, 16), (16, 40), (40, 40)]
    sizes, ranges = [8] * 6, [(0, INF)] * 6
    # box at the image corner: (0, 0) is its corner, (40, 16) on its x2, (16, 40) on its y2.
    assert _assign(points, sizes, ranges, [[0, 0, 40, 40]]).tolist() == [-1, 0, 0, -1, -1, -1]
    # (16, 16) its corner, (40, 16) on its y1, (16, 40) on its x1: only (40, 40) is inside.
    assert _assign(points, sizes, ranges, [[16, 16, 50, 50]]).tolist() == [-1] * 5 + [0]
    assert _assign(points, sizes, ranges, [[4, 4, 40.5, 40]]).tolist() == [-1, 0, 0, 0, -1, -1]


def test_padding_rows_are_ignored():
    points, sizes, ranges = [(20, 20)], [8], [(0, INF)]
    boxes = [[10, 10, 30, 30], [0, 0, 60, 40]]
    assert _assign(points, sizes, ranges, boxes, valid=[False, True]).tolist() == [1]
    assert _assign(points, sizes, ranges, boxes, valid=[False, False]).tolist() == [-1]


def test_centerness_values():
    d = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 4.0, 6.0, 4.0], [1.0, 2.0, 9.0, 8.0]])
    expected = [1.0, math.sqrt(2 / 6), math.sqrt(1 / 9 * 2 / 8)]
    torch.testing.assert_close(centerness_targets(d), torch.tensor(expected))


def test_locations_of_each_convention():
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    points = [
        (a[:, :2] + a[:, 2:]) / 2 for a in location_generator([8, 16], "exact")(feats, (16, 24))
    ]
    assert points[0].tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    assert points[1].tolist() == [[0, 0], [16, 0]]
    shifted = [
        (a[:, :2] + a[:, 2:]) / 2
        for a in location_generator([8, 16], "maskrcnn_benchmark")(feats, (16, 24))
    ]
    assert shifted[1].tolist() == [[8, 8], [24, 8]]
    tv = [
        (a[:, :2] + a[:, 2:]) / 2
        for a in location_generator([8, 16], "torchvision")(feats, (16, 24))
    ]
    assert tv[1].tolist() == [[0, 0], [12, 0]]  # 24 // 2 = 12 px between columns


# ---------------------------------------------------------------- losses
def _one_level(num_images=2, height=4, width=5, stride=8, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(height) * stride, torch.arange(width) * stride, indexing="ij"
    )
    points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
    n = points.shape[0]
    # FCOS's anchors: one square of side `stride` per location, centred on it
    anchors = torch.cat([points - stride / 2, points + stride / 2], dim=1)
    outputs = DenseOutputs(
        [torch.randn(num_images, n, num_classes, generator=g)],
        [torch.rand(num_images, n, 4, generator=g) * 20],
        [torch.randn(num_images, n, generator=g)],
    )
    return [anchors], [stride], outputs


def test_labels_normalizer_and_box_losses_by_hand():
    anchors, strides, outputs = _one_level()
    cls, dist, ctr = outputs
    recorder = RecordingLoss()
    loss = FCOSLossComputation(3, recorder, strides, [(0, INF)], center_sampling_radius=0.0)
    # image 0: one box covering (8, 8) and (16, 8) only; image 1: none.
    targets = [
        {"boxes": torch.tensor([[4.0, 5.0, 20.0, 12.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    out = loss(anchors, outputs, targets)
    labels, normalizer = recorder.calls[0]
    expected = torch.zeros(2, 20, dtype=torch.int64)
    expected[0, [6, 7]] = 2  # (x, y) = (8, 8) and (16, 8): row 1, columns 1 and 2
    assert torch.equal(labels, expected) and normalizer == 2.0
    # by hand: the two positives' boxes, GIoU against the target, centre-ness BCE.
    box = torch.tensor([[4.0, 5.0, 20.0, 12.0]])
    reg, bce = 0.0, 0.0
    for idx, (x, y) in ((6, (8.0, 8.0)), (7, (16.0, 8.0))):
        l_, t_, r_, b_ = dist[0][0, idx].tolist()
        pred = torch.tensor([[x - l_, y - t_, x + r_, y + b_]])
        reg += float(iou_loss(pred, box, "giou"))
        lt = (x - 4.0, y - 5.0, 20.0 - x, 12.0 - y)
        target = math.sqrt(
            min(lt[0], lt[2]) / max(lt[0], lt[2]) * min(lt[1], lt[3]) / max(lt[1], lt[3])
        )
        bce += float(F.binary_cross_entropy_with_logits(ctr[0][0, idx], torch.tensor(target)))
    assert out["loss_reg"].item() == pytest.approx(reg / 2, rel=1e-5)
    assert out["loss_centerness"].item() == pytest.approx(bce / 2, rel=1e-5)


def test_iou_losses_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [3.0, 0.0, 4.0, 2.0]])
    # IoU 2 / 6; hull 3 x 2 = 6 = union: GIoU = IoU. Second pair: IoU 0, hull 8, union 6.
    torch.testing.assert_close(iou_loss(a, b, "giou"), torch.tensor([1 - 1 / 3, 1 + 2 / 8]))
    torch.testing.assert_close(iou_loss(a[:1], b[:1], "iou"), torch.tensor([math.log(3.0)]))


@pytest.mark.parametrize("ignore", [False, True])
def test_locations_outside_the_centre_region_are_background_or_ignored(ignore):
    anchors, strides, outputs = _one_level()  # locations x in 0..32, y in 0..24, every 8 px
    recorder = RecordingLoss()
    loss = FCOSLossComputation(
        3, recorder, strides, [(0, INF)], center_sampling_radius=1.0, ignore_outside_center=ignore
    )
    # box A, centre (20, 12): inside it x in {8, 16, 24, 32} and y in {8, 16}; its centre
    # region (|dx|, |dy| < 8) keeps x in {16, 24}. Image 1 adds box B around (8, 8) alone.
    box_a, box_b = [2.0, 2.0, 38.0, 22.0], [4.0, 4.0, 12.0, 12.0]
    targets = [
        {"boxes": torch.tensor([box_a]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([box_a, box_b]), "labels": torch.tensor([3, 1])},
    ]
    loss(anchors, outputs, targets)
    labels, normalizer = recorder.calls[0]
    expected = torch.zeros(2, 20, dtype=torch.int64)
    expected[:, [7, 8, 12, 13]] = 3  # (16, 8), (24, 8), (16, 16), (24, 16)
    off_centre = -1 if ignore else 0
    expected[0, [6, 9, 11, 14]] = off_centre  # (8, 8), (32, 8), (8, 16), (32, 16)
    expected[1, [9, 11, 14]] = off_centre
    expected[1, 6] = 1  # (8, 8) lies in the centre region of box B: a positive either way
    assert torch.equal(labels, expected) and normalizer == 9.0  # positives of the batch


def test_images_without_boxes():
    anchors, strides, outputs = _one_level()
    for p in outputs.cls_logits + outputs.box_regression + outputs.centerness:
        p.requires_grad_(True)
    recorder = RecordingLoss()
    loss = FCOSLossComputation(3, recorder, strides, [(0, INF)])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = loss(anchors, outputs, [empty, empty])
    labels, normalizer = recorder.calls[0]
    assert (labels == 0).all() and normalizer == 1.0  # at least 1
    assert out["loss_reg"].item() == 0.0 and out["loss_centerness"].item() == 0.0
    sum(out.values()).backward()  # a graph without positives still backpropagates
    with pytest.raises(ValueError, match="image 1 of the batch.*degenerate"):
        loss(
            anchors,
            outputs,
            [empty, {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}],
        )


def _dr_reference(logits, labels, pos_lambda, neg_lambda, L, margin, tau):
    """The DR loss of DESIGN.md per image, from the (location, class) entries: positives are
    (l, label_l - 1) of the positive locations, negatives every other entry; mean over images."""
    losses = []
    for lg, lb in zip(logits, labels):
        p = lg.sigmoid()
        pos = torch.zeros_like(p, dtype=torch.bool)
        rows = (lb > 0).nonzero()[:, 0]
        pos[rows, lb[rows] - 1] = True
        neg_p, pos_p = p[~pos], p[pos]
        p_neg = (torch.softmax(neg_p / neg_lambda, 0) * neg_p).sum()
        p_pos = (torch.softmax(-pos_p / pos_lambda, 0) * pos_p).sum() if pos.any() else 1.0
        losses.append(tau * F.softplus(L * (p_neg - p_pos + margin)) / L)
    return torch.stack(losses).mean()


def test_dr_loss_on_fcos_ranks_location_class_entries_per_image():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DR_LOSS.GROUPING", "image"])
    anchors, strides, outputs = _one_level(num_images=2, seed=4)
    loss = FCOSLossComputation(
        3, build_dr_loss(cfg), strides, [(0, INF)], center_sampling_radius=0.0
    )
    targets = [
        {
            "boxes": torch.tensor([[4.0, 5.0, 20.0, 12.0], [20.0, 10.0, 36.0, 30.0]]),
            "labels": torch.tensor([2, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    out = loss(anchors, outputs, targets)
    labels = loss.prepare_targets(anchors, targets)["labels"]
    assert int((labels > 0).sum()) >= 4
    d = cfg.MODEL.DR_LOSS
    expected = _dr_reference(
        torch.cat(outputs.cls_logits, 1).double(),
        labels,
        d.POS_LAMBDA,
        d.NEG_LAMBDA,
        d.L,
        d.MARGIN,
        d.TAU,
    )
    assert out["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- inference scores
def test_centerness_weighted_scores():
    cls = torch.tensor([[[-30.0, -2.0, 0.0], [3.0, 20.0, 40.0]]])
    ctr = torch.tensor([[1.0, 25.0]])
    expected = (cls.double().sigmoid() * ctr.double().sigmoid()[..., None]).sqrt()
    got = centerness_weighted_logits(cls, ctr).double().sigmoid()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("exponent", [0.75, 1.0, 0.3])
def test_centerness_weighted_scores_with_a_class_exponent(exponent):
    torch.manual_seed(0)
    cls, ctr = torch.randn(2, 50, 3) * 4, torch.randn(2, 50) * 4
    expected = cls.double().sigmoid() ** exponent * ctr.double().sigmoid()[..., None] ** (
        1 - exponent
    )
    got = centerness_weighted_logits(cls, ctr, exponent).double().sigmoid()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    if exponent == 1.0:  # the class score alone
        torch.testing.assert_close(got, cls.double().sigmoid(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["FCOS", "ATSS"])
def test_the_class_score_exponent_reaches_the_post_processing(arch):
    node = f"MODEL.{arch}"
    overrides = ["MODEL.META_ARCHITECTURE", arch, "MODEL.FPN.USE_C5", False]
    overrides += ["MODEL.GROUP_NORM.NUM_GROUPS", 8, f"{node}.PRIOR_PROB", 0.5]
    overrides += [f"{node}.INFERENCE_TH", 0.0]  # untrained: keep every entry
    default = build_detector(small_detector_cfg(*overrides, node=node))
    assert default.postprocessor.class_score_exponent == 0.5
    cfg = small_detector_cfg(*overrides, f"{node}.CLASS_SCORE_EXPONENT", 0.75, node=node)
    model = build_detector(cfg).eval()
    assert model.postprocessor.class_score_exponent == 0.75
    # the detections are ranked by class^0.75 * centre-ness^0.25, recomputed here from the
    # head's outputs
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 128) * 255]
    with torch.no_grad():
        batch = model.preprocess(images)
        outputs, _ = model.dense_forward(batch.tensors)
        dets = model(images)[0]
    cls = torch.cat(outputs.cls_logits, 1)[0].sigmoid()
    ctr = torch.cat(outputs.centerness, 1)[0].sigmoid()
    scores = cls**0.75 * ctr[:, None] ** 0.25
    top = scores.flatten().sort(descending=True).values
    assert len(dets["scores"]) > 0
    # the best detection is the best (location, class) entry under the new score
    torch.testing.assert_close(dets["scores"][0], top[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=f"{node}.CLASS_SCORE_EXPONENT"):
        small_detector_cfg(*overrides, f"{node}.CLASS_SCORE_EXPONENT", 0.0, node=node)


# ---------------------------------------------------------------- the detector from a config
def _cfg(*overrides):
    fcos = ["MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FPN.USE_C5", False]
    fcos += ["MODEL.GROUP_NORM.NUM_GROUPS", 8]
    return small_detector_cfg(*fcos, *overrides, node="MODEL.FCOS")


@pytest.mark.parametrize("loss_type", ["FOCAL", "DR"])
def test_detector_trains_and_predicts(loss_type):
    model = build_detector(_cfg("MODEL.FCOS.LOSS_TYPE", loss_type)).train()
    assert (
        type(model.loss.cls_loss).__name__
        == {"FOCAL": "FocalLoss", "DR": "DRClassificationLoss"}[loss_type]
    )
    images = [torch.rand(3, 96, 128) * 255, torch.rand(3, 128, 96) * 255]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[10.0, 8.0, 30.0, 90.0]]), "labels": torch.tensor([3])},
    ]
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_reg"] > 0
    sum(losses.values()).backward()
    assert model.head.scales.grad is not None and model.head.scales.grad.abs().sum() > 0
    with torch.no_grad():
        dets = model.eval()(images, original_sizes=[(192, 256), (128, 96)])
    assert len(dets) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in dets)


def test_config_validation_names_the_fcos_key():
    with pytest.raises(ValueError, match="MODEL.FCOS.LOSS_TYPE"):
        _cfg("MODEL.FCOS.LOSS_TYPE", "NOPE")
    with pytest.raises(ValueError, match="MODEL.FCOS.SIZES_OF_INTEREST"):
        _cfg("MODEL.FCOS.SIZES_OF_INTEREST", (64, 32, 256, 512))
    with pytest.raises(ValueError, match="MODEL.FCOS.REG_LOSS"):
        _cfg("MODEL.FCOS.REG_LOSS", "l1")
    with pytest.raises(ValueError, match="MODEL.FCOS.PRIOR_PROB"):
        _cfg("MODEL.FCOS.PRIOR_PROB", 1.0)


def test_score_distribution_takes_the_assigned_locations_class_scores():
    from drdet.engine.score_distribution import anchor_scores

    model = build_detector(_cfg("MODEL.ANCHOR_GENERATOR.CONVENTION", "exact")).eval()
    image = torch.rand(3, 128, 128) * 255
    # A 32-pixel box: on P3 (stride 8, range up to 64) the locations strictly inside it are
    # x, y in {16, 24, 32}, i.e. cells (i, j) in {2, 3, 4}^2 of the 16 x 16 map; on P4 its
    # locations' largest distance (24) is below P4's range.
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([3])}
    foreground, background = anchor_scores(model, image, target)
    with torch.no_grad():
        batch = model.preprocess([image])
        cls_logits = model.head(model.backbone(batch.tensors))[0]
    cells = [i * 16 + j for i in (2, 3, 4) for j in (2, 3, 4)]
    expected = cls_logits[0][0, cells, 2].sigmoid()
    torch.testing.assert_close(foreground, expected)
    num_locations = sum(level.shape[1] for level in cls_logits)
    assert background.shape == (num_locations - 9, 3)

import pytest
import torch
import torchvision
from helpers.detections import NUM_CLASSES as C
from helpers.detections import (
    SIZES,
    post_processor,
    postprocess_inputs,
    reference_postprocess,
    run_post,
)
from helpers.devices import DEVICES
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder


def test_candidates_threshold_topk_decode():
    anchors, logits, deltas = postprocess_inputs()
    post = post_processor(pre_nms_top_n=30)
    # a large image: no box is clipped away, so every top-k entry above the threshold is kept.
    sizes = torch.tensor([[1000.0, 1000.0]] * 2)
    boxes, scores, classes, images = post.candidates(anchors[0], logits[0], deltas[0], sizes)
    coder = TVBoxCoder((10.0, 10.0, 5.0, 5.0))
    for i in range(2):
        s = logits[0][i].sigmoid().flatten()
        top = s.argsort(descending=True)[:30]
        top = top[s[top] > 0.2]
        torch.testing.assert_close(scores[images == i], s[top])
        assert torch.equal(classes[images == i], top % C)
        expected = coder.decode_single(deltas[0][i][top // C], anchors[0][top // C]).clamp(min=0)
        torch.testing.assert_close(boxes[images == i], expected)


def test_candidates_are_clipped_and_nonempty():
    anchors, logits, deltas = postprocess_inputs()
    sizes = torch.tensor(SIZES, dtype=torch.float32)
    boxes, _, _, images = post_processor().candidates(anchors[0], logits[0], deltas[0], sizes)
    assert (boxes[:, 2] <= sizes[images, 1]).all() and (boxes[:, 3] <= sizes[images, 0]).all()
    assert (boxes >= 0).all() and (boxes[:, 2:] > boxes[:, :2]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_against_per_class_loop_reference(device):
    anchors, logits, deltas = postprocess_inputs()
    args = dict(score_thresh=0.2, pre_nms_top_n=60, nms_thresh=0.5, detections_per_img=25)
    on_device = [[t.to(device) for t in ts] for ts in (anchors, logits, deltas)]
    ours = run_post(post_processor(**args), *on_device, SIZES)
    ours = [{k: v.cpu() for k, v in d.items()} for d in ours]
    ref = reference_postprocess(anchors, logits, deltas, SIZES, **args)
    for (h, w), det, r in zip(SIZES, ours, ref):
        assert 0 < len(det["scores"]) <= 25
        assert (det["scores"][1:] <= det["scores"][:-1]).all()
        b = det["boxes"]
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 1] >= 0).all()
            and (b[:, 2] <= w).all()
            and (b[:, 3] <= h).all()
        )
        assert (
            det["labels"].dtype == torch.int64
            and det["labels"].min() >= 1
            and det["labels"].max() <= C
        )
        torch.testing.assert_close(det["scores"], r["scores"])
        torch.testing.assert_close(det["boxes"], r["boxes"])
        assert torch.equal(det["labels"], r["labels"])


def test_limits_bind_and_nms_removes_overlaps():
    anchors, logits, deltas = postprocess_inputs()
    few = run_post(post_processor(detections_per_img=5), anchors, logits, deltas, SIZES)
    assert [len(d["scores"]) for d in few] == [5, 5]
    everything = run_post(
        post_processor(nms_thresh=1.0, detections_per_img=10**6), anchors, logits, deltas, SIZES
    )
    pruned = run_post(post_processor(detections_per_img=10**6), anchors, logits, deltas, SIZES)
    for e, p in zip(everything, pruned):
        assert len(p["scores"]) < len(e["scores"]) <= 2 * 60
        for c in p["labels"].unique():
            m = p["labels"] == c
            iou = torchvision.ops.box_iou(p["boxes"][m], p["boxes"][m]).fill_diagonal_(0)
            assert iou.max() <= 0.5


def test_nothing_above_threshold_gives_empty_results():
    anchors, logits, deltas = postprocess_inputs()
    logits = [torch.full_like(l, -10.0) for l in logits]
    dets = run_post(post_processor(), anchors, logits, deltas, SIZES)
    assert [d["boxes"].shape for d in dets] == [(0, 4), (0, 4)]
    assert dets[0]["labels"].dtype == torch.int64


def test_bad_threshold():
    with pytest.raises(ValueError, match="score_thresh"):
        post_processor(score_thresh=1.0)

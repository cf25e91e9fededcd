import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from conftest import DEVICES

from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.retinanet.inference import RetinaNetPostProcessor

C = 4
SIZES = [(64, 96), (90, 70)]  # (height, width) of two images padded to 96 x 96


def _level(stride, grid):
    ys, xs = torch.meshgrid(
        torch.arange(grid) * float(stride), torch.arange(grid) * float(stride), indexing="ij"
    )
    centres = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    half = torch.tensor([[2.0, 2.0], [3.0, 1.5]])[None] * stride
    return torch.cat([centres - half, centres + half], -1).reshape(-1, 4)


def _inputs():
    anchors = [_level(8, 12), _level(16, 6)]
    logits = [torch.randn(2, len(a), C) * 2 - 2 for a in anchors]
    deltas = [torch.randn(2, len(a), 4) * 0.5 for a in anchors]
    return anchors, logits, deltas


def _post(**kw):
    args = dict(score_thresh=0.2, pre_nms_top_n=60, nms_thresh=0.5, detections_per_img=25)
    args.update(kw)
    return RetinaNetPostProcessor(BoxCoder(), **args)


def _reference(
    anchors,
    logits,
    deltas,
    image_sizes,
    score_thresh,
    pre_nms_top_n,
    nms_thresh,
    detections_per_img,
):
    """maskrcnn-benchmark's order of operations, one image and one class at a time."""
    coder = TVBoxCoder((10.0, 10.0, 5.0, 5.0))
    out = []
    for i, (h, w) in enumerate(image_sizes):
        boxes, scores, labels = [], [], []
        for a, lg, d in zip(anchors, logits, deltas):
            s = lg[i].sigmoid()
            cand = (s > score_thresh).nonzero()
            cand_scores = s[cand[:, 0], cand[:, 1]]
            top = cand_scores.topk(min(pre_nms_top_n, len(cand_scores))).indices
            cand, cand_scores = cand[top], cand_scores[top]
            b = coder.decode_single(d[i][cand[:, 0]], a[cand[:, 0]])
            b = torchvision.ops.clip_boxes_to_image(b, (h, w))
            keep = torchvision.ops.remove_small_boxes(b, 1e-6)  # strictly positive width and height
            boxes.append(b[keep]), scores.append(cand_scores[keep]), labels.append(
                cand[keep, 1] + 1
            )
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        kb, ks, kl = [], [], []
        for c in range(1, C + 1):
            m = labels == c
            keep = torchvision.ops.nms(boxes[m], scores[m], nms_thresh)
            kb.append(boxes[m][keep]), ks.append(scores[m][keep]), kl.append(labels[m][keep])
        kb, ks, kl = torch.cat(kb), torch.cat(ks), torch.cat(kl)
        order = ks.argsort(descending=True)[:detections_per_img]
        out.append({"boxes": kb[order], "scores": ks[order], "labels": kl[order]})
    return out


def test_candidates_threshold_topk_decode():
    anchors, logits, deltas = _inputs()
    post = _post(pre_nms_top_n=30)
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
    anchors, logits, deltas = _inputs()
    sizes = torch.tensor(SIZES, dtype=torch.float32)
    boxes, _, _, images = _post().candidates(anchors[0], logits[0], deltas[0], sizes)
    assert (boxes[:, 2] <= sizes[images, 1]).all() and (boxes[:, 3] <= sizes[images, 0]).all()
    assert (boxes >= 0).all() and (boxes[:, 2:] > boxes[:, :2]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_against_per_class_loop_reference(device):
    anchors, logits, deltas = _inputs()
    args = dict(score_thresh=0.2, pre_nms_top_n=60, nms_thresh=0.5, detections_per_img=25)
    on_device = [[t.to(device) for t in ts] for ts in (anchors, logits, deltas)]
    ours = _post(**args)(*on_device, SIZES)
    ours = [{k: v.cpu() for k, v in d.items()} for d in ours]
    ref = _reference(anchors, logits, deltas, SIZES, **args)
    for i, ((h, w), det, r) in enumerate(zip(SIZES, ours, ref)):
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
    anchors, logits, deltas = _inputs()
    few = _post(detections_per_img=5)(anchors, logits, deltas, SIZES)
    assert [len(d["scores"]) for d in few] == [5, 5]
    everything = _post(nms_thresh=1.0, detections_per_img=10**6)(anchors, logits, deltas, SIZES)
    pruned = _post(detections_per_img=10**6)(anchors, logits, deltas, SIZES)
    for e, p in zip(everything, pruned):
        assert len(p["scores"]) < len(e["scores"]) <= 2 * 60
        for c in p["labels"].unique():
            m = p["labels"] == c
            iou = torchvision.ops.box_iou(p["boxes"][m], p["boxes"][m]).fill_diagonal_(0)
            assert iou.max() <= 0.5


def test_nothing_above_threshold_gives_empty_results():
    anchors, logits, deltas = _inputs()
    logits = [torch.full_like(l, -10.0) for l in logits]
    dets = _post()(anchors, logits, deltas, SIZES)
    assert [d["boxes"].shape for d in dets] == [(0, 4), (0, 4)]
    assert dets[0]["labels"].dtype == torch.int64


def test_bad_threshold():
    with pytest.raises(ValueError, match="score_thresh"):
        _post(score_thresh=1.0)

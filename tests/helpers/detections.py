"""Detections compared up to float rounding (also drdet's Predictor against a torchvision
detector), and the RetinaNet post-processing inputs with an independent reference
(maskrcnn-benchmark's order of operations on torchvision's ops)."""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DenseOutputs, DensePostProcessor

Detections = dict[str, torch.Tensor]

NUM_CLASSES = 4  # C of the post-processing inputs
SIZES = [(64, 96), (90, 70)]  # (height, width) of two images padded to 96 x 96


def assert_same_detections(
    det: Detections, ref: Detections, rtol: float = 1e-4, box_atol: float = 1e-3
) -> None:
    """``det`` and ``ref`` (dicts of "boxes" (D, 4), "scores" (D,), "labels" (D,)) hold the same
    detections up to float rounding: one to one, same label, box and score within ``rtol``. Two
    detections whose scores differ by less than the rounding may come in either order."""
    assert len(det["scores"]) == len(ref["scores"])
    assert (det["scores"][1:] <= det["scores"][:-1]).all()
    used = set()
    for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
        close = (
            (det["labels"] == label)
            & torch.isclose(det["scores"], score, rtol=rtol, atol=1e-7)
            & torch.isclose(det["boxes"], box, rtol=rtol, atol=box_atol).all(1)
        )
        match = [j for j in close.nonzero().flatten().tolist() if j not in used]
        assert match, f"no match for label {int(label)}, score {float(score)}, box {box.tolist()}"
        used.add(match[0])


def bgr_and_rgb_images(
    height: int, width: int, n: int = 2, seed: int = 5
) -> tuple[list, list[torch.Tensor]]:
    """`n` random (H, W, 3) uint8 BGR images (what drdet.Predictor takes) and the same pixels as
    torchvision's detectors take them: (3, H, W) RGB 0-1 float tensors."""
    g = torch.Generator().manual_seed(seed)
    shape = (height, width, 3)
    bgr = [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).numpy() for _ in range(n)]
    rgb = [torch.from_numpy(b[..., ::-1].copy()).permute(2, 0, 1).float() / 255 for b in bgr]
    return bgr, rgb


def assert_predictor_matches_torchvision(
    predictor, torchvision_model, bgr: list, rgb: list[torch.Tensor], score_atol: float
) -> None:
    """drdet's `predictor` on the BGR images and `torchvision_model` on the same pixels (RGB 0-1)
    give the same detections in the same order: boxes within 1e-3 px, scores within
    `score_atol`, labels one higher (torchvision's 0..79 are drdet's 1..80). Each image needs
    more than 20 detections to compare, none empty (torchvision keeps boxes that clipping made
    empty, drdet drops them: such an image could not agree)."""
    with torch.no_grad():
        theirs = torchvision_model(rgb)
    for image, t in zip(bgr, theirs):
        o = predictor(image)
        assert len(t["boxes"]) > 20  # enough detections to compare
        widths, heights = (t["boxes"][:, 2:] - t["boxes"][:, :2]).unbind(1)
        assert (widths > 0).all() and (heights > 0).all()
        assert o["boxes"].shape == t["boxes"].shape
        torch.testing.assert_close(o["boxes"], t["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(o["scores"], t["scores"], rtol=0, atol=score_atol)
        assert torch.equal(o["labels"], t["labels"] + 1)


def _level(stride: int, grid: int) -> torch.Tensor:
    """(grid * grid * 2, 4) anchors in pixels: two shapes at each cell of a stride-spaced grid."""
    ys, xs = torch.meshgrid(
        torch.arange(grid) * float(stride), torch.arange(grid) * float(stride), indexing="ij"
    )
    centres = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    half = torch.tensor([[2.0, 2.0], [3.0, 1.5]])[None] * stride
    return torch.cat([centres - half, centres + half], -1).reshape(-1, 4)


def postprocess_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Two levels (strides 8 and 16) for two images: anchors (A_l, 4), logits (2, A_l, C) and
    box deltas (2, A_l, 4) per level, random from the global generator."""
    anchors = [_level(8, 12), _level(16, 6)]
    logits = [torch.randn(2, len(a), NUM_CLASSES) * 2 - 2 for a in anchors]
    deltas = [torch.randn(2, len(a), 4) * 0.5 for a in anchors]
    return anchors, logits, deltas


def post_processor(**kw) -> DensePostProcessor:
    """A DensePostProcessor with RetinaNet's box coder and the tests' defaults, overridden by
    ``kw``."""
    args = dict(score_thresh=0.2, pre_nms_top_n=60, nms_thresh=0.5, detections_per_img=25)
    args.update(kw)
    return DensePostProcessor(BoxCoder(), **args)


def run_post(post: DensePostProcessor, anchors, logits, deltas, sizes):
    """``post`` on per-level RetinaNet logits and deltas."""
    return post(anchors, DenseOutputs(logits, deltas), sizes)


def reference_postprocess(
    anchors: list[torch.Tensor],
    logits: list[torch.Tensor],
    deltas: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    score_thresh: float,
    pre_nms_top_n: int,
    nms_thresh: float,
    detections_per_img: int,
) -> list[Detections]:
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
            (
                boxes.append(b[keep]),
                scores.append(cand_scores[keep]),
                labels.append(cand[keep, 1] + 1),
            )
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        kb, ks, kl = [], [], []
        for c in range(1, NUM_CLASSES + 1):
            m = labels == c
            keep = torchvision.ops.nms(boxes[m], scores[m], nms_thresh)
            kb.append(boxes[m][keep]), ks.append(scores[m][keep]), kl.append(labels[m][keep])
        kb, ks, kl = torch.cat(kb), torch.cat(ks), torch.cat(kl)
        order = ks.argsort(descending=True)[:detections_per_img]
        out.append({"boxes": kb[order], "scores": ks[order], "labels": kl[order]})
    return out

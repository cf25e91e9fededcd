"""The detector end to end: a tiny backbone for the detector's own logic, then every config file
with its real backbone, then the Predictor."""

import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.detections import assert_same_detections
from helpers.dr_loss import dr_settings
from torch import nn

from drdet.modeling import RetinaNet
from drdet.modeling.anchor_generator import AnchorGenerator
from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DensePostProcessor
from drdet.modeling.losses.dr import DRClassificationLoss
from drdet.modeling.losses.focal import FocalLoss
from drdet.modeling.matcher import Matcher
from drdet.modeling.retinanet import RetinaNetHead, RetinaNetLossComputation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
C = 3


class TinyBackbone(nn.Module):
    """Five maps of strides 8..128 and sizes ceil(H / stride), as build_backbone's."""

    out_channels = 8

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.downs = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, x):
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


def _tiny_detector(loss_type="DR"):
    scales = [2 ** (k / 3) for k in range(3)]
    anchors = AnchorGenerator(
        [[s * k for k in scales] for s in (32, 64, 128, 256, 512)],
        (0.5, 1.0, 2.0),
        (8, 16, 32, 64, 128),
    )
    coder = BoxCoder()
    dr = dr_settings(neg_lambda=0.08)
    cls_loss = DRClassificationLoss(dr) if loss_type == "DR" else FocalLoss()
    loss = RetinaNetLossComputation(Matcher(0.5, 0.4), coder, C, cls_loss)
    post = DensePostProcessor(coder, score_thresh=0.05, detections_per_img=20)
    head = RetinaNetHead(8, C, 9, num_convs=1, prior_prob=0.1)
    return RetinaNet(
        TinyBackbone(), head, anchors, loss, post, [100.0, 110.0, 120.0], [50.0, 60.0, 70.0], 32
    )


def _images():
    return [torch.rand(3, 96, 128) * 255, torch.rand(3, 128, 96) * 255]


def _targets():
    return [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 5.0, 120.0, 40.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.tensor([[5.0, 50.0, 90.0, 120.0]]), "labels": torch.tensor([2])},
    ]


def test_preprocess_normalises_and_pads_once():
    model = _tiny_detector()
    images = _images()
    batch = model.preprocess(images)
    assert batch.tensors.shape == (2, 3, 128, 128) and batch.image_sizes == [(96, 128), (128, 96)]
    mean, std = torch.tensor([100.0, 110.0, 120.0]), torch.tensor([50.0, 60.0, 70.0])
    torch.testing.assert_close(
        batch.tensors[1, :, :128, :96], (images[1] - mean[:, None, None]) / std[:, None, None]
    )
    assert (batch.tensors[0, :, 96:] == 0).all() and (batch.tensors[1, :, :, 96:] == 0).all()
    with pytest.raises(ValueError, match=r"images\[0\] has shape \(1, 8, 8\)"):
        model.preprocess([torch.zeros(1, 8, 8)])


@pytest.mark.parametrize("loss_type", ["DR", "FOCAL"])
def test_train_forward_backward_two_sizes(loss_type):
    model = _tiny_detector(loss_type).train()
    losses = model(_images(), _targets())
    assert set(losses) == {"loss_cls", "loss_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.cuda
@pytest.mark.parametrize("loss_type", ["DR", "FOCAL"])
def test_cuda_matches_cpu(loss_type):
    cpu = _tiny_detector(loss_type)
    gpu = _tiny_detector(loss_type)
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    images, targets = _images(), _targets()
    ref = cpu.train()(images, targets)
    out = gpu.train()([i.cuda() for i in images], targets)
    for k in ref:
        torch.testing.assert_close(out[k].cpu(), ref[k], rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        ref = cpu.eval()(images)
        out = gpu.eval()([i.cuda() for i in images])
    for r, o in zip(ref, out):
        assert torch.equal(o["labels"].cpu(), r["labels"])
        torch.testing.assert_close(o["boxes"].cpu(), r["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(o["scores"].cpu(), r["scores"], rtol=1e-4, atol=1e-5)


def test_train_image_without_boxes():
    model = _tiny_detector().train()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(_images(), targets)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_reg"].item() == 0.0


def test_train_needs_targets_and_rejects_degenerate_boxes():
    model = _tiny_detector().train()
    with pytest.raises(ValueError, match="targets"):
        model(_images())
    targets = _targets()
    targets[1] = {
        "boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]),
        "labels": torch.tensor([1]),
        "image_id": 7,
    }
    with pytest.raises(ValueError, match=r"image 1 of the batch \(image_id 7\)"):
        model(_images(), targets)


def test_eval_outputs_and_original_sizes():
    model = _tiny_detector().eval()
    images = _images()
    with torch.no_grad():
        dets = model(images)
        rescaled = model(images, original_sizes=[(192, 256), (64, 48)])
    for det, (h, w), big, (oh, ow) in zip(
        dets, [(96, 128), (128, 96)], rescaled, [(192, 256), (64, 48)]
    ):
        assert 0 < len(det["scores"]) <= 20
        assert (det["scores"][1:] <= det["scores"][:-1]).all()
        assert det["labels"].min() >= 1 and det["labels"].max() <= C
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
        torch.testing.assert_close(big["boxes"], det["boxes"] * scale)
        assert torch.equal(big["scores"], det["scores"])


# ---------------------------------------------------------------- every config, real backbone
def _cfg(path=None, overrides=()):
    from drdet.config import get_cfg

    cfg = get_cfg()
    if path is not None:
        cfg.merge_from_file(path)
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHT",
            "",
            "INPUT.MIN_SIZE_TRAIN",
            (96,),
            "INPUT.MAX_SIZE_TRAIN",
            128,
            "INPUT.MIN_SIZE_TEST",
            96,
            "INPUT.MAX_SIZE_TEST",
            128,
            *overrides,
        ]
    )
    return cfg


def test_config_files_exist():
    assert CONFIGS, "no configs/**/*.yaml found"


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_config_trains_and_predicts(path):
    from drdet.modeling import build_detector

    cfg = _cfg(path)
    if cfg.MODEL.RESNETS.NORM in ("BN", "SyncBN"):  # batch statistics of 2 random images: freeze
        cfg.MODEL.RESNETS.NORM = "FrozenBN"
    model = build_detector(cfg).train()
    losses = model(_images(), _targets())
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_reg"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(_images(), empty)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_reg"].item() == 0.0
    with torch.no_grad():
        dets = model.eval()(_images())
    assert len(dets) == 2 and all(len(d["scores"]) <= cfg.TEST.DETECTIONS_PER_IMG for d in dets)


# ---------------------------------------------------------------- Predictor
def _predictor_cfg(weight=""):
    return _cfg(
        None,
        [
            "MODEL.BACKBONE.CONV_BODY",
            "R-18-FPN-RETINANET",
            "MODEL.RETINANET.INFERENCE_TH",
            0.009,
            "MODEL.NUM_CLASSES",
            4,
            "MODEL.WEIGHT",
            weight,
        ],
    )


def test_predictor_resizes_loads_weights_and_returns_original_pixels(tmp_path):
    from drdet.engine.predictor import Predictor

    first = Predictor(_predictor_cfg())
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": first.model.state_dict(), "iteration": 10}, path)
    second = Predictor(_predictor_cfg(path))  # other random init, then the saved weights
    image = (np.random.RandomState(0).rand(150, 200, 3) * 255).astype(np.uint8)
    out1, out2 = first(image), second(image)
    assert len(out1["scores"]) > 0
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(out1[k], out2[k])
    # The same by hand: shorter side 150 -> 96 (longer 128 <= 128), BGR 0-255, boxes scaled back.
    resized = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    resized = F.interpolate(resized, size=(96, 128), mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        ref = first.inference_model([resized])[0]
        unfolded = first.model([resized])[0]
    torch.testing.assert_close(
        out1["boxes"], ref["boxes"] * torch.tensor([200 / 128, 150 / 96] * 2)
    )
    # The predictor runs a copy with FrozenBN folded into the convolutions: same detections.
    assert_same_detections(ref, unfolded)
    assert (out1["boxes"][:, 2] <= 200).all() and (out1["boxes"][:, 3] <= 150).all()
    # a plain state dict is accepted too; wrong keys are an error
    torch.save(first.model.state_dict(), path)
    torch.testing.assert_close(Predictor(_predictor_cfg(path))(image)["scores"], out1["scores"])
    torch.save({"model": {"nope": torch.zeros(1)}}, path)
    with pytest.raises(RuntimeError, match="nope"):
        Predictor(_predictor_cfg(path))
    with pytest.raises(ValueError, match="uint8"):
        first(image.astype(np.float32))


# ---------------------------------------------------------------- post-processing without top-k
def test_postprocess_without_topk_when_few_pass_the_threshold():
    """When no image has more than pre_nms_top_n entries above the threshold, the candidates
    come from one pass over the logits instead of a top-k: same candidates in the same order
    (by image, decreasing score), same detections as the per-class reference."""
    from helpers.detections import NUM_CLASSES as C_POST
    from helpers.detections import (
        SIZES,
        post_processor,
        postprocess_inputs,
        reference_postprocess,
        run_post,
    )

    anchors, logits, deltas = postprocess_inputs()
    big = torch.tensor([[1000.0, 1000.0]] * 2)
    post = post_processor(pre_nms_top_n=10**4)
    assert int((logits[0].sigmoid() > 0.2).flatten(1).sum(1).max()) < 10**4
    boxes, scores, classes, images = post.candidates(anchors[0], logits[0], deltas[0], big)
    assert torch.equal(images, images.sort().values)
    coder = BoxCoder()
    for i in range(2):
        s = logits[0][i].sigmoid().flatten()
        top = s.argsort(descending=True)
        top = top[s[top] > 0.2]
        torch.testing.assert_close(scores[images == i], s[top])
        assert torch.equal(classes[images == i], top % C_POST)
        expected = coder.decode(deltas[0][i][top // C_POST], anchors[0][top // C_POST]).clamp(min=0)
        torch.testing.assert_close(boxes[images == i], expected)

    args = dict(score_thresh=0.2, pre_nms_top_n=10**4, nms_thresh=0.5, detections_per_img=25)
    ours = run_post(DensePostProcessor(BoxCoder(), **args), anchors, logits, deltas, SIZES)
    ref = reference_postprocess(anchors, logits, deltas, SIZES, **args)
    for det, r in zip(ours, ref):
        assert len(det["scores"]) > 0
        torch.testing.assert_close(det["scores"], r["scores"])
        torch.testing.assert_close(det["boxes"], r["boxes"])
        assert torch.equal(det["labels"], r["labels"])

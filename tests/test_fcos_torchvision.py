"""FCOS against torchvision's ``fcos_resnet50_fpn``: a converted state dict gives torchvision's
features, head outputs, locations and detections (seeded random weights), and drdet's FCOS
losses equal torchvision's on the same predictions and boxes (its assignment is the
independent reference of drdet's, away from the bound and tie conventions that differ)."""

import os

import pytest
import torch
import torchvision
from helpers.detections import assert_predictor_matches_torchvision, bgr_and_rgb_images
from helpers.tiny import benchmark_model_args  # tests/ is on sys.path under pytest
from tool_loader import load_tool  # tests/ is on sys.path under pytest
from torch import nn

from drdet.checkpoint import load_checkpoint_file, load_model_state
from drdet.checkpoint.fcos_conversion import convert_torchvision_fcos
from drdet.config import get_cfg
from drdet.engine.predictor import Predictor
from drdet.modeling import build_detector
from drdet.modeling.fcos.box_coder import anchor_centres

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TV_CONFIG = os.path.join(ROOT, "configs", "torchvision", "fcos_resnet50_fpn_torchvision.yaml")
H, W = 128, 192  # no resize (min_size=128, max_size=256), a multiple of 32; P7 x-stride 96


@pytest.fixture(autouse=True)
def _datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path / "datasets"))


convert_checkpoint = load_tool("convert_checkpoint")


def _torchvision_fcos(num_classes: int = 80):
    """torchvision's FCOS with seeded random weights that make mapping mistakes visible: BN
    statistics away from identity, head weights that spread the scores over (0, 1)."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=H, max_size=256
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        for name, p in tv.named_parameters():
            if name.startswith("head.") or name.startswith("backbone.fpn."):
                p.normal_(0.0, 0.03 if p.dim() > 1 else 0.1, generator=g)
        tv.head.classification_head.cls_logits.weight.mul_(6.0)
        tv.head.classification_head.cls_logits.bias.add_(-2.0)
        tv.head.regression_head.bbox_ctrness.weight.mul_(6.0)
        tv.head.regression_head.bbox_reg.weight.mul_(0.1)
    return tv.eval()


def _drdet(num_classes: int = 81):
    cfg = get_cfg()
    cfg.merge_from_file(TV_CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.NUM_CLASSES", num_classes])
    return cfg, build_detector(cfg).eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fcos_tv")
    tv = _torchvision_fcos()
    src, out = str(tmp_path / "tv.pth"), str(tmp_path / "drdet.pth")
    torch.save(tv.state_dict(), src)
    convert_checkpoint.convert_file(src, out)
    cfg, model = _drdet()
    load_model_state(model, load_checkpoint_file(out)["model"], strict=True)
    return tv, cfg, model, out


def _features_and_heads(tv, model, x):
    with torch.no_grad():
        tv_features = list(tv.backbone(x).values())
        tv_out = tv.head(tv_features)
        features = model.backbone(x)
        ours = model.head(features)
    return tv_features, tv_out, features, ours


def test_converted_state_dict_names():
    tv = _torchvision_fcos(91)
    state = convert_torchvision_fcos(tv.state_dict())
    _, model = _drdet(92)
    assert set(state) == set(model.state_dict())
    assert torch.equal(
        state["head.centerness.weight"], tv.state_dict()["head.regression_head.bbox_ctrness.weight"]
    )
    assert torch.equal(state["head.scales"], torch.ones(5))
    picked = convert_torchvision_fcos(tv.state_dict(), class_columns=[5, 1])
    assert torch.equal(
        picked["head.cls_logits.bias"], tv.head.classification_head.cls_logits.bias[[5, 1]]
    )
    with pytest.raises(KeyError, match="head.regression_head.extra"):
        convert_torchvision_fcos(
            {**tv.state_dict(), "head.regression_head.extra.weight": torch.zeros(1)}
        )


def test_head_outputs_and_locations_match(converted):
    tv, _, model, _ = converted
    g = torch.Generator().manual_seed(5)
    x = torchvision.transforms.functional.normalize(
        torch.rand(1, 3, H, W, generator=g), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    )
    tv_features, tv_out, features, (cls, dist, ctr) = _features_and_heads(tv, model, x)
    for ours, theirs in zip(features, tv_features):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(cls, 1), tv_out["cls_logits"], rtol=0, atol=1e-3)
    torch.testing.assert_close(torch.cat(ctr, 1), tv_out["bbox_ctrness"][..., 0], rtol=0, atol=1e-3)
    # torchvision's regression is in units of the anchor side (= the level's stride).
    strides = torch.cat(
        [
            torch.full((f.shape[-2] * f.shape[-1], 1), float(s))
            for f, s in zip(features, (8, 16, 32, 64, 128))
        ]
    )
    torch.testing.assert_close(
        torch.cat(dist, 1), tv_out["bbox_regression"] * strides, rtol=1e-4, atol=1e-2
    )
    assert torch.cat(cls, 1).std() > 0.5 and (torch.cat(dist, 1) > 0).float().mean() > 0.2
    anchors = tv.anchor_generator(
        torchvision.models.detection.image_list.ImageList(x, [(H, W)]), tv_features
    )[0]
    ours = anchor_centres(torch.cat(model.anchor_generator(features, (H, W))))
    assert torch.equal(ours, (anchors[:, :2] + anchors[:, 2:]) / 2)
    assert ours[-1].tolist() == [96.0, 0.0]  # P7 of a 192-px-wide batch: torchvision's stride 96


def test_detections_match_after_nms(converted):
    """The converted file through drdet.Predictor (resize, normalisation, locations and
    post-processing) against torchvision's model on the same pixels."""
    tv, cfg, _, out = converted
    cfg = cfg.clone()
    cfg.merge_from_list(["MODEL.WEIGHT", out, "INPUT.MIN_SIZE_TEST", H, "INPUT.MAX_SIZE_TEST", 256])
    assert cfg.TEST.DETECTIONS_PER_IMG == tv.detections_per_img == 100
    bgr, rgb = bgr_and_rgb_images(H, W)
    assert_predictor_matches_torchvision(Predictor(cfg), tv, bgr, rgb, score_atol=1e-4)


def _random_targets(g, n):
    """Boxes of non-integer corners (no location on a border, no size at a range bound) and
    areas far apart (torchvision's tie-break in float32 is exact only then)."""
    targets = []
    for _ in range(n):
        k = 6
        wh = torch.rand(k, 2, generator=g) * torch.tensor([W * 0.9, H * 0.9]) + 4.3
        xy = torch.rand(k, 2, generator=g) * (torch.tensor([W, H]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 81, (k,), generator=g)})
    return targets


def test_focal_losses_equal_torchvisions(converted):
    """Assignment (centre sampling, level ranges, smallest area), focal, GIoU and centre-ness
    losses against torchvision's compute_loss on the same predictions and boxes."""
    tv, _, model, _ = converted
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, H, W, generator=g)
    targets = _random_targets(g, 2)
    for t in targets:
        areas = (t["boxes"][:, 2:] - t["boxes"][:, :2]).prod(1).sort().values
        assert (areas.diff() > 16).all()
    with torch.no_grad():
        features = model.backbone(x)
        outputs = model.head(features)
        cls, dist, ctr = outputs
        ours_anchors = model.anchor_generator(features, (H, W))
        ours = model.loss(ours_anchors, outputs, targets)
        tv_features = list(tv.backbone(x).values())
        anchors = tv.anchor_generator(
            torchvision.models.detection.image_list.ImageList(x, [(H, W)] * 2), tv_features
        )
        sizes = torch.cat(
            [
                torch.full((a.shape[0], 1), float(s))
                for a, s in zip(ours_anchors, (8, 16, 32, 64, 128))
            ]
        )
        head_outputs = {
            "cls_logits": torch.cat(cls, 1),
            "bbox_regression": torch.cat(dist, 1) / sizes,
            "bbox_ctrness": torch.cat(ctr, 1)[..., None],
        }
        tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
        theirs = tv.compute_loss(
            tv_targets, head_outputs, anchors, [a.shape[0] for a in ours_anchors]
        )
        labels = model.loss.labels(ours_anchors, targets)
    assert 10 < int((labels > 0).sum()) < labels.numel() // 2
    torch.testing.assert_close(ours["loss_cls"], theirs["classification"], rtol=1e-4, atol=0)
    torch.testing.assert_close(ours["loss_reg"], theirs["bbox_regression"], rtol=1e-4, atol=0)
    torch.testing.assert_close(ours["loss_centerness"], theirs["bbox_ctrness"], rtol=1e-4, atol=0)


def test_fcos_source_name_and_anchor_convention(converted, tmp_path):
    tv, _, _, _ = converted
    src = str(tmp_path / "tv.pth")
    torch.save(tv.state_dict(), src)
    out = str(tmp_path / "out.pth")
    convert_checkpoint.convert_file(src, out, source="torchvision")
    assert torch.load(out, weights_only=True)["anchor_convention"] == "torchvision"
    with pytest.raises(ValueError, match="torchvision_fcos"):
        convert_checkpoint.convert_file(
            src, str(tmp_path / "other.pth"), source="maskrcnn-benchmark"
        )


@pytest.mark.slow
@pytest.mark.usefixtures("keep_num_threads")
def test_benchmark_model_compares_fcos(capsys):
    """tools/benchmark_model.py --model fcos: both FCOS models, same weights and images, return
    the same number of detections."""
    import re

    benchmark_model = load_tool("benchmark_model")
    rows = benchmark_model.main(
        ["--model", "fcos"] + benchmark_model_args("inference", "--score-thresh", "0.005")
    )
    assert [r[0] for r in rows] == [
        "inference per image (torchvision)",
        "inference per image (drdet)",
    ]
    printed = capsys.readouterr().out
    assert printed.startswith("fcos;")
    counts = re.search(r"detections per image: drdet \[(\d+)\], torchvision \[(\d+)\]", printed)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) > 0

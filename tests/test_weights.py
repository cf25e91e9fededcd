"""Foreign weights: torchvision RetinaNet and maskrcnn-benchmark checkpoints through
tools/convert_checkpoint.py, torchvision and MSRA ImageNet backbones through MODEL.WEIGHT.
References: torchvision's own models run on the same tensors, and the source tensors by name."""

import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers.anchors import detectron_cell_anchors_inclusive
from helpers.detections import assert_predictor_matches_torchvision, bgr_and_rgb_images
from tool_loader import load_tool  # tests/ is on sys.path under pytest
from torch import nn

from drdet.checkpoint import Checkpointer, load_checkpoint_file, load_model_state
from drdet.checkpoint.weights import COCO_CATEGORY_IDS, detect_format, to_drdet_state
from drdet.config import get_cfg
from drdet.engine.predictor import Predictor
from drdet.layers import FrozenBatchNorm2d
from drdet.modeling import build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TV_CONFIG = os.path.join(ROOT, "configs", "torchvision", "retinanet_resnet50_fpn_torchvision.yaml")
H, W = 128, 192  # no resize (min_size=128, max_size=256) and a multiple of 32: no padding either


@pytest.fixture(autouse=True)
def _datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path / "datasets"))


convert_checkpoint = load_tool("convert_checkpoint")


def _randomize(model: nn.Module, cls_bias: float) -> None:
    """Seeded weights that make every mapping mistake visible: BN statistics and affine values
    away from identity, head weights large enough that scores spread over (0, 1)."""
    g = _randomize_bn(model, seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("head.") or name.startswith("backbone.fpn."):
                p.normal_(0.0, 0.03 if p.dim() > 1 else 0.1, generator=g)
        model.head.classification_head.cls_logits.bias.add_(cls_bias)
        # Moderate box deltas: boxes stay inside the image (see the after-NMS test).
        model.head.regression_head.bbox_reg.weight.mul_(0.1)


def _torchvision_retinanet(num_classes: int, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=H, max_size=256
    )
    _randomize(tv, cls_bias=-2.5)
    tv.eval()
    path = str(tmp_path / f"tv_{num_classes}.pth")
    torch.save(tv.state_dict(), path)
    return tv, path


def _drdet_from_torchvision_config(num_classes: int):
    cfg = get_cfg()
    cfg.merge_from_file(TV_CONFIG)
    cfg.MODEL.NUM_CLASSES = num_classes
    return cfg, build_detector(cfg).eval()


def _images():
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, H, W, generator=g), torch.rand(3, H, W, generator=g)]


# ------------------------------------------------------------------------- torchvision RetinaNet
@pytest.fixture(scope="module")
def tv_converted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tv")
    tv, path = _torchvision_retinanet(80, tmp_path)
    out = str(tmp_path / "drdet.pth")
    convert_checkpoint.convert_file(path, out)
    cfg, model = _drdet_from_torchvision_config(81)  # torchvision's 80 labels + background
    load_model_state(model, load_checkpoint_file(out)["model"], strict=True)
    return tv, cfg, model, path


def test_torchvision_head_outputs_match_before_nms(tv_converted):
    tv, _, model, _ = tv_converted
    images = torch.stack(_images()[:1])
    # The same normalised, unpadded-size tensor into both networks, bypassing torchvision's
    # transform (its normalisation is checked by the full-detection test).
    x = torchvision.transforms.functional.normalize(
        images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    )
    with torch.no_grad():
        tv_features = list(tv.backbone(x).values())
        tv_out = tv.head(tv_features)
        features = model.backbone(x)
        out = model.head(features)
        cls_logits, box_deltas = out.cls_logits, out.box_regression
    assert [f.shape for f in features] == [f.shape for f in tv_features]
    for ours, theirs in zip(features, tv_features):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    cls_logits, box_deltas = torch.cat(cls_logits, 1), torch.cat(box_deltas, 1)
    assert (
        cls_logits.shape
        == tv_out["cls_logits"].shape
        == (1, 9 * sum(f.shape[-2] * f.shape[-1] for f in features), 80)
    )
    torch.testing.assert_close(cls_logits, tv_out["cls_logits"], rtol=0, atol=1e-3)
    torch.testing.assert_close(box_deltas, tv_out["bbox_regression"], rtol=0, atol=1e-3)
    assert cls_logits.std() > 0.5  # the heads really compute something


def test_torchvision_anchors_are_torchvisions(tv_converted):
    """ANCHOR_CONVENTION "torchvision": the converted model's anchors are torchvision's own for
    this batch (including its P7 x-stride of 192 // 2 = 96)."""
    tv, cfg, model, _ = tv_converted
    assert cfg.MODEL.ANCHOR_GENERATOR.CONVENTION == "torchvision"
    x = torch.zeros(1, 3, H, W)
    with torch.no_grad():
        feats = list(tv.backbone(x).values())
    theirs = tv.anchor_generator(
        torchvision.models.detection.image_list.ImageList(x, [(H, W)]), feats
    )[0]
    ours = torch.cat(model.anchor_generator(feats, (H, W)))
    assert torch.equal(ours, theirs)


def test_torchvision_detections_match_after_nms(tv_converted, tmp_path):
    """The converted file through drdet.Predictor (its resize, normalisation, anchors and
    post-processing) against torchvision's model on the same pixels."""
    tv, cfg, _, path = tv_converted
    out = str(tmp_path / "drdet.pth")
    convert_checkpoint.convert_file(path, out)
    cfg = cfg.clone()
    cfg.merge_from_list(
        [
            "MODEL.WEIGHT",
            out,
            "MODEL.DEVICE",
            "cpu",
            "INPUT.MIN_SIZE_TEST",
            H,
            "INPUT.MAX_SIZE_TEST",
            256,
        ]
    )
    assert cfg.TEST.DETECTIONS_PER_IMG == tv.detections_per_img == 300
    bgr, rgb = bgr_and_rgb_images(H, W)
    assert_predictor_matches_torchvision(Predictor(cfg), tv, bgr, rgb, score_atol=1e-3)


def test_converted_model_with_other_anchors_warns(tv_converted, tmp_path, caplog):
    _, cfg, _, path = tv_converted
    out = str(tmp_path / "drdet.pth")
    convert_checkpoint.convert_file(path, out)
    assert torch.load(out, weights_only=True)["anchor_convention"] == "torchvision"
    cfg = cfg.clone()
    cfg.merge_from_list(["MODEL.ANCHOR_GENERATOR.CONVENTION", "exact"])
    with caplog.at_level(logging.WARNING):
        Checkpointer(build_detector(cfg)).load(out)
    assert "MODEL.ANCHOR_GENERATOR.CONVENTION torchvision" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Checkpointer(_drdet_from_torchvision_config(81)[1]).load(out)
    assert "ANCHOR_CONVENTION" not in caplog.text


def test_torchvision_coco_columns_become_contiguous_labels(tmp_path):
    tv, path = _torchvision_retinanet(91, tmp_path)
    out = str(tmp_path / "coco.pth")
    convert_checkpoint.convert_file(path, out, source="torchvision", coco_category_ids=True)
    _, model = _drdet_from_torchvision_config(81)  # the config as shipped
    load_model_state(model, load_checkpoint_file(out)["model"], strict=True)
    x = torch.stack(_images()[:1])
    with torch.no_grad():
        theirs = tv.head(list(tv.backbone(x).values()))["cls_logits"]
        ours = torch.cat(model.head(model.backbone(x))[0], 1)
    assert ours.shape[-1] == 80 and theirs.shape[-1] == 91
    # drdet label k (1..80) is COCO category COCO_CATEGORY_IDS[k - 1], torchvision's label.
    index = torch.tensor(COCO_CATEGORY_IDS)
    torch.testing.assert_close(ours, theirs[..., index], rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="look like torchvision_retinanet"):
        convert_checkpoint.convert_file(
            path, str(tmp_path / "other.pth"), source="maskrcnn-benchmark"
        )


def test_detector_checkpoints_are_not_loaded_unconverted(tv_converted):
    _, _, model, path = tv_converted
    with pytest.raises(ValueError, match="convert_checkpoint.py"):
        Checkpointer(model).load(path)


# ----------------------------------------------------------------------------- maskrcnn-benchmark
def _mrcnn_retinanet_state(model: nn.Module, num_convs: int):
    """A maskrcnn-benchmark RetinaNet checkpoint for an R-50 FPN as that codebase names it
    (DataParallel prefix, head under rpn., cached anchors), shapes taken from drdet's tensors
    by the correspondence written out here by hand."""
    own = model.state_dict()
    names = {"module.backbone.body.stem.conv1.weight": "backbone.body.stem.conv1.weight"}
    bn = ("weight", "bias", "running_mean", "running_var")
    names.update({f"module.backbone.body.stem.bn1.{p}": f"backbone.body.stem.bn1.{p}" for p in bn})
    for stage, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            base = f"backbone.body.layer{stage}.{b}."
            for i in (1, 2, 3):
                names[f"module.{base}conv{i}.weight"] = f"{base}conv{i}.weight"
                names.update({f"module.{base}bn{i}.{p}": f"{base}bn{i}.{p}" for p in bn})
            if b == 0:
                names[f"module.{base}downsample.0.weight"] = f"{base}downsample.0.weight"
                names.update(
                    {f"module.{base}downsample.1.{p}": f"{base}downsample.1.{p}" for p in bn}
                )
    for k in (2, 3, 4):
        for kind in ("inner", "layer"):
            for p in ("weight", "bias"):
                names[f"module.backbone.fpn.fpn_{kind}{k}.{p}"] = f"backbone.fpn.fpn_{kind}{k}.{p}"
    for p6 in ("p6", "p7"):
        for p in ("weight", "bias"):
            names[f"module.backbone.fpn.top_blocks.{p6}.{p}"] = f"backbone.fpn.top_blocks.{p6}.{p}"
    for tower in ("cls_tower", "bbox_tower"):
        for i in range(num_convs):
            for p in ("weight", "bias"):
                names[f"module.rpn.head.{tower}.{2 * i}.{p}"] = f"head.{tower}.{2 * i}.{p}"
    for out in ("cls_logits", "bbox_pred"):
        for p in ("weight", "bias"):
            names[f"module.rpn.head.{out}.{p}"] = f"head.{out}.{p}"
    g = torch.Generator().manual_seed(7)
    state = {src: torch.randn(own[dst].shape, generator=g) for src, dst in names.items()}
    for level in range(5):
        state[f"module.rpn.anchor_generator.cell_anchors.{level}"] = torch.randn(9, 4, generator=g)
    return state, names


def test_maskrcnn_benchmark_checkpoint_every_tensor_from_its_key(tmp_path):
    cfg = get_cfg()  # maskrcnn-benchmark's network conventions are drdet's defaults
    cfg.merge_from_list(["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CONVS", 1])
    model = build_detector(cfg)
    state, names = _mrcnn_retinanet_state(model, num_convs=1)
    assert detect_format(state) == "maskrcnn_benchmark"
    src = str(tmp_path / "model_final.pth")
    torch.save({"model": state, "iteration": 90000, "optimizer": {"state": {}}}, src)
    out = str(tmp_path / "converted.pth")
    convert_checkpoint.main([src, out])
    data = torch.load(out, weights_only=True)
    assert set(data) == {"model", "anchor_convention"}  # no optimizer, no iteration
    assert data["anchor_convention"] == "maskrcnn_benchmark"
    load_model_state(model, data["model"], strict=True)  # every drdet tensor is provided
    own = model.state_dict()
    assert set(names.values()) == set(own)
    for src_key, dst_key in names.items():
        assert torch.equal(own[dst_key], state[src_key]), (src_key, dst_key)


def _randomize_drdet(model: nn.Module, cls_bias: float) -> None:
    """Like _randomize, for a drdet detector (FrozenBN buffers, drdet's head names)."""
    g = _randomize_bn(model, seed=4)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.startswith(("head.", "backbone.fpn.")):
                t.normal_(0.0, 0.03 if t.dim() > 1 else 0.1, generator=g)
        model.head.cls_logits.weight.mul_(0.4)  # scores spread over (0, 1), none rounds to 1
        model.head.cls_logits.bias.add_(cls_bias)
        model.head.bbox_pred.weight.mul_(0.1)


def _maskrcnn_benchmark_detections(cls_logits, box_deltas, cfg, image_hw):
    """maskrcnn-benchmark's RetinaNet inference for one image, written out for the test in its
    own box conventions: Detectron anchors in inclusive corners centred on s*j + (s-1)/2, "+1"
    widths in decoding, clipping to [0, W-1], NMS with "+1" areas, per class over all levels.
    Inputs: per level (A_l, C) logits and (A_l, 4) deltas of drdet's head (same layout)."""
    rc = cfg.MODEL.RETINANET
    height, width = image_hw
    wx, wy, ww, wh = rc.BBOX_REG_WEIGHTS
    clamp = math.log(1000.0 / 16)
    scales = [rc.OCTAVE ** (k / rc.SCALES_PER_OCTAVE) for k in range(rc.SCALES_PER_OCTAVE)]
    boxes, scores, labels = [], [], []
    for logits, deltas, stride, size in zip(
        cls_logits, box_deltas, (8, 16, 32, 64, 128), rc.ANCHOR_SIZES
    ):
        cell = detectron_cell_anchors_inclusive(
            stride, [size * k for k in scales], rc.ASPECT_RATIOS
        )
        cells_w = width // stride + (width % stride > 0)
        cells_h = height // stride + (height % stride > 0)
        ys, xs = torch.meshgrid(
            torch.arange(cells_h) * stride, torch.arange(cells_w) * stride, indexing="ij"
        )
        shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).double()
        anchors = (shifts + cell[None]).reshape(-1, 4)
        assert anchors.shape[0] == logits.shape[0]
        prob = logits.double().sigmoid()
        candidates = prob > rc.INFERENCE_TH
        top = min(int(candidates.sum()), rc.PRE_NMS_TOP_N)
        score, index = prob[candidates].topk(top)
        anchor_index, cls = candidates.nonzero()[index].unbind(1)
        a, d = anchors[anchor_index], deltas[anchor_index].double()
        aw, ah = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
        ax, ay = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
        cx, cy = d[:, 0] / wx * aw + ax, d[:, 1] / wy * ah + ay
        pw = torch.exp((d[:, 2] / ww).clamp(max=clamp)) * aw
        ph = torch.exp((d[:, 3] / wh).clamp(max=clamp)) * ah
        b = torch.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw - 1, cy + 0.5 * ph - 1], 1)
        b[:, 0::2] = b[:, 0::2].clamp(0, width - 1)
        b[:, 1::2] = b[:, 1::2].clamp(0, height - 1)
        boxes.append(b), scores.append(score), labels.append(cls + 1)
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    keep = []
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        idx = idx[scores[idx].argsort(descending=True)]
        while idx.numel():
            i, idx = idx[0], idx[1:]
            keep.append(int(i))
            b, rest = boxes[i], boxes[idx]
            iw = (torch.minimum(b[2], rest[:, 2]) - torch.maximum(b[0], rest[:, 0]) + 1).clamp(
                min=0
            )
            ih = (torch.minimum(b[3], rest[:, 3]) - torch.maximum(b[1], rest[:, 1]) + 1).clamp(
                min=0
            )
            area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)  # noqa
            inter = iw * ih
            idx = idx[inter / (area(b) + area(rest) - inter) <= rc.NMS_TH]
    keep = torch.tensor(keep)
    keep = keep[scores[keep].argsort(descending=True)][: cfg.TEST.DETECTIONS_PER_IMG]
    return boxes[keep], scores[keep], labels[keep]


def test_maskrcnn_benchmark_detections_match_after_nms(tmp_path):
    """A maskrcnn-benchmark checkpoint (names and shapes as that codebase writes them), converted
    and run by drdet.Predictor with ANCHOR_CONVENTION maskrcnn_benchmark, gives
    maskrcnn-benchmark's detections: its boxes with x2, y2 one more (exclusive corners)."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "dr_retina", "dr_R-50-FPN_1x.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.WEIGHT",
            "",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS",
            64,
            "MODEL.RETINANET.NUM_CONVS",
            1,
            "MODEL.ANCHOR_GENERATOR.CONVENTION",
            "maskrcnn_benchmark",
            "INPUT.MIN_SIZE_TEST",
            H,
            "INPUT.MAX_SIZE_TEST",
            256,
        ]
    )
    source = build_detector(cfg).eval()
    _randomize_drdet(source, cls_bias=-4.0)
    own = source.state_dict()
    state, names = _mrcnn_retinanet_state(source, num_convs=1)
    state = {src: own[dst].clone() for src, dst in names.items()}
    src = str(tmp_path / "model_final.pth")
    torch.save({"model": state, "iteration": 90000}, src)
    out = str(tmp_path / "converted.pth")
    convert_checkpoint.main([src, out])
    cfg.merge_from_list(["MODEL.WEIGHT", out])
    predictor = Predictor(cfg)
    bgr, _ = bgr_and_rgb_images(H, W)
    for image in bgr:
        ours = predictor(image)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float()  # BGR 0-255, no resize
        with torch.no_grad():
            out = source.head(source.backbone(source.preprocess([tensor]).tensors))
            logits, deltas = out.cls_logits, out.box_regression
        boxes, scores, labels = _maskrcnn_benchmark_detections(
            [x[0] for x in logits], [x[0] for x in deltas], cfg, (H, W)
        )
        assert len(boxes) > 20
        assert ours["boxes"].shape == boxes.shape
        torch.testing.assert_close(ours["scores"].double(), scores, rtol=0, atol=1e-3)
        # Equal scores may come in another order: pair each detection with one of the same
        # label, box (x2, y2 one more in drdet's corners) and score.
        theirs = torch.cat(
            [boxes + torch.tensor([0, 0, 1.0, 1.0], dtype=torch.float64), scores[:, None]], 1
        )
        mine = torch.cat([ours["boxes"].double(), ours["scores"].double()[:, None]], 1)
        diff = (mine[:, None] - theirs[None]).abs().amax(-1)
        diff[ours["labels"][:, None] != labels[None]] = math.inf
        for row in diff:
            j = int(row.argmin())
            assert row[j] < 1e-3, row[j]
            diff[:, j] = math.inf  # paired
    # drdet's own anchors would place them elsewhere (and the file says so when loaded).
    cfg.merge_from_list(["MODEL.ANCHOR_GENERATOR.CONVENTION", "exact"])
    shifted = Predictor(cfg)(bgr[0])["boxes"]
    assert shifted.shape != ours["boxes"].shape or (shifted - ours["boxes"]).abs().max() > 1


# ----------------------------------------------------------------------------- ImageNet backbones
def _r50_detector(**overrides):
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS",
            64,
            "MODEL.RETINANET.NUM_CONVS",
            1,
            *[x for kv in overrides.items() for x in kv],
        ]
    )
    return build_detector(cfg).eval()


def test_torchvision_resnet50_fills_the_body_only(tmp_path, caplog):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval()
    _randomize_bn(resnet)
    path = str(tmp_path / "resnet50.pth")
    torch.save(resnet.state_dict(), path)
    model = _r50_detector(**{"MODEL.RESNETS.STRIDE_IN_1X1": False})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        Checkpointer(model).load(path)
    log = caplog.text
    assert "torchvision_resnet" in log and "layer1.0.conv1.weight -> backbone.body.layer1.0" in log
    after = model.state_dict()
    missing = [k for k in after if not k.startswith("backbone.body.")]
    assert missing and all(k in log for k in missing)  # FPN and head reported missing...
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(k in m for m in warned for k in missing), warned  # ...by design: not a warning
    for k in missing:
        assert torch.equal(after[k], before[k])  # ...and left as initialised
    assert "fc.weight" in log  # reported as dropped
    # The body computes what torchvision's ResNet-50 computes.
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c5 = model.backbone.body(x)[-1]
        y = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        reference = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(y))))
    torch.testing.assert_close(c5, reference, rtol=1e-4, atol=1e-4)


def _randomize_bn(model: nn.Module, seed: int = 2) -> torch.Generator:
    """BN and FrozenBN statistics and affine values away from identity, from a generator seeded
    with `seed`; returns the generator for more draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return g


def _msra_blobs(model):
    """Detectron's R-50.pkl blob names (hand-written layout), shapes from drdet's body."""
    own = model.state_dict()
    body = "backbone.body."
    names = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.bn1.weight",
        "res_conv1_bn_b": "stem.bn1.bias",
    }
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(blocks):
            for letter, i in zip("abc", (1, 2, 3)):
                pre, dst = f"res{stage}_{b}_branch2{letter}", f"layer{stage - 1}.{b}."
                names[pre + "_w"] = dst + f"conv{i}.weight"
                names[pre + "_bn_s"] = dst + f"bn{i}.weight"
                names[pre + "_bn_b"] = dst + f"bn{i}.bias"
            if b == 0:
                pre, dst = f"res{stage}_0_branch1", f"layer{stage - 1}.0.downsample."
                names.update(
                    {
                        pre + "_w": dst + "0.weight",
                        pre + "_bn_s": dst + "1.weight",
                        pre + "_bn_b": dst + "1.bias",
                    }
                )
    rng = np.random.default_rng(0)
    blobs = {
        k: rng.standard_normal(tuple(own[body + v].shape)).astype(np.float32)
        for k, v in names.items()
    }
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = rng.standard_normal(1000).astype(np.float32)
    return blobs, {k: body + v for k, v in names.items()}


def test_msra_pickle_loads_only_with_opt_in_and_maps_to_the_body(tmp_path, caplog):
    model = _r50_detector()  # STRIDE_IN_1X1 True, FrozenBN: MSRA's conventions
    blobs, names = _msra_blobs(model)
    path = str(tmp_path / "R-50.pkl")
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    with pytest.raises(RuntimeError, match="allow_pickle"):
        Checkpointer(model).load(path)
    with caplog.at_level(logging.INFO):
        Checkpointer(model).load(path, allow_pickle=True)
    assert "res2_0_branch2a_w -> backbone.body.layer1.0.conv1.weight" in caplog.text
    own = model.state_dict()
    body_keys = {k for k in own if k.startswith("backbone.body.")}
    norms = {
        k.rsplit(".", 1)[0]
        for k in names.values()
        if k.endswith("bn1.weight")
        or k.endswith("bn2.weight")
        or k.endswith("bn3.weight")
        or k.endswith("1.weight")
        and "downsample" in k
    }
    assert body_keys == set(names.values()) | {
        n + s for n in norms for s in (".running_mean", ".running_var")
    }
    for blob, key in names.items():
        assert torch.equal(own[key], torch.from_numpy(blobs[blob])), (blob, key)
    for n in norms:
        assert torch.equal(own[n + ".running_mean"], torch.zeros_like(own[n + ".running_mean"]))
        assert torch.equal(own[n + ".running_var"], torch.ones_like(own[n + ".running_var"]))
    # The stem computes Caffe2's affine: relu(conv(x) * s + b), then a 3x3/2 max pool.
    x = torch.randn(1, 3, 32, 32)
    w, s, b = (torch.from_numpy(blobs[k]) for k in ("conv1_w", "res_conv1_bn_s", "res_conv1_bn_b"))
    reference = F.max_pool2d(
        F.relu(F.conv2d(x, w, stride=2, padding=3) * s[:, None, None] + b[:, None, None]), 3, 2, 1
    )
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.body.stem(x), reference, rtol=1e-4, atol=1e-4)


def test_detect_format_from_keys():
    t = torch.zeros(1)
    assert (
        detect_format({"conv1.weight": t, "layer1.0.conv1.weight": t, "fc.weight": t})
        == "torchvision_resnet"
    )
    assert detect_format({"conv1_w": t, "res2_0_branch2a_w": t}) == "msra"
    assert detect_format({"module.rpn.head.cls_logits.weight": t}) == "maskrcnn_benchmark"
    assert (
        detect_format({"head.classification_head.cls_logits.weight": t}) == "torchvision_retinanet"
    )
    assert (
        detect_format({"backbone.body.stem.conv1.weight": t, "head.cls_logits.weight": t})
        == "drdet"
    )
    state = {"backbone.body.stem.conv1.weight": t}
    assert to_drdet_state(state) == state


@pytest.mark.usefixtures("synthetic_datasets_root")
def test_imagenet_weights_of_the_other_convention_are_refused(tmp_path):
    """torchvision ImageNet weights (RGB 0-1, stride in the 3x3 conv) given to train_net with
    a config of MSRA's conventions (BGR 0-255, stride in the 1x1 conv): an error naming the
    file and both keys, before any training; set as the message says, they load."""
    from helpers.tiny import SYNTHETIC_CONFIG, tiny_overrides

    from drdet.engine.defaults import load_config
    from drdet.utils.errors import UserValueError

    torch.manual_seed(0)
    path = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    out = tmp_path / "out"
    opts = tiny_overrides("synthetic:4:0:128", "", max_iter=1) + ["MODEL.WEIGHT", path]
    msra = ["MODEL.RESNETS.STRIDE_IN_1X1", "True", "OUTPUT_DIR", str(out)]
    with pytest.raises(UserValueError) as info:
        load_tool("train_net").main(["--config-file", SYNTHETIC_CONFIG, *opts, *msra])
    message = str(info.value)
    assert path in message and "torchvision_resnet" in message
    assert "INPUT.TO_BGR255 True" in message and "MODEL.RESNETS.STRIDE_IN_1X1 True" in message
    assert not any(name.endswith(".pth") for name in os.listdir(out))
    torchvision_input = ["INPUT.TO_BGR255", "False", "INPUT.PIXEL_MEAN", "[0.485, 0.456, 0.406]"]
    torchvision_input += ["INPUT.PIXEL_STD", "[0.229, 0.224, 0.225]"]
    cfg = load_config(SYNTHETIC_CONFIG, opts + torchvision_input)  # STRIDE_IN_1X1 False there
    Checkpointer(build_detector(cfg)).load(path, load_training_state=False, cfg=cfg)

"""Foreign weights: torchvision RetinaNet and maskrcnn-benchmark checkpoints through
tools/convert_checkpoint.py, torchvision and MSRA ImageNet backbones through MODEL.WEIGHT.
References: torchvision's own models run on the same tensors, and the source tensors by name."""
import importlib.util
import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from drdet.config import get_cfg
from drdet.modeling.anchor_generator import build_anchor_generator
from drdet.modeling.detector import build_detector
from drdet.utils.checkpoint import Checkpointer, load_checkpoint_file, load_model_state
from drdet.utils.weights import COCO_CATEGORY_IDS, detect_format, to_drdet_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TV_CONFIG = os.path.join(ROOT, "configs", "torchvision", "retinanet_resnet50_fpn_torchvision.yaml")
H, W = 128, 192  # no resize (min_size=128, max_size=256) and a multiple of 32: no padding either


@pytest.fixture(autouse=True)
def _datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path / "datasets"))


def _converter():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", os.path.join(ROOT, "tools", "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomize(model: nn.Module, cls_bias: float) -> None:
    """Seeded weights that make every mapping mistake visible: BN statistics and affine values
    away from identity, head weights large enough that scores spread over (0, 1)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        for name, p in model.named_parameters():
            if name.startswith("head.") or name.startswith("backbone.fpn."):
                p.normal_(0.0, 0.03 if p.dim() > 1 else 0.1, generator=g)
        model.head.classification_head.cls_logits.bias.add_(cls_bias)
        # Moderate box deltas: boxes stay inside the image (see the after-NMS test).
        model.head.regression_head.bbox_reg.weight.mul_(0.1)


def _torchvision_retinanet(num_classes: int, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=H, max_size=256)
    _randomize(tv, cls_bias=-2.5)
    tv.eval()
    path = str(tmp_path / f"tv_{num_classes}.pth")
    torch.save(tv.state_dict(), path)
    return tv, path


def _drdet_from_torchvision_config(num_classes: int):
    cfg = get_cfg()
    cfg.merge_from_file(TV_CONFIG)
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
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
    _converter().convert_file(path, out)
    cfg, model = _drdet_from_torchvision_config(81)  # torchvision's 80 labels + background
    load_model_state(model, load_checkpoint_file(out)["model"], strict=True)
    return tv, cfg, model, path


def test_torchvision_head_outputs_match_before_nms(tv_converted):
    tv, _, model, _ = tv_converted
    images = torch.stack(_images()[:1])
    # The same normalised, unpadded-size tensor into both networks, bypassing torchvision's
    # transform (its normalisation is checked by the full-detection test).
    x = torchvision.transforms.functional.normalize(images, [0.485, 0.456, 0.406],
                                                    [0.229, 0.224, 0.225])
    with torch.no_grad():
        tv_features = list(tv.backbone(x).values())
        tv_out = tv.head(tv_features)
        features = model.backbone(x)
        cls_logits, box_deltas = model.head(features)
    assert [f.shape for f in features] == [f.shape for f in tv_features]
    for ours, theirs in zip(features, tv_features):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    cls_logits, box_deltas = torch.cat(cls_logits, 1), torch.cat(box_deltas, 1)
    assert cls_logits.shape == tv_out["cls_logits"].shape == (1, 9 * sum(
        f.shape[-2] * f.shape[-1] for f in features), 80)
    torch.testing.assert_close(cls_logits, tv_out["cls_logits"], rtol=0, atol=1e-3)
    torch.testing.assert_close(box_deltas, tv_out["bbox_regression"], rtol=0, atol=1e-3)
    assert cls_logits.std() > 0.5  # the heads really compute something


def _drdet_cell_anchors(cfg):
    return [a.float() for a in build_anchor_generator(cfg)._cell_anchors]


def test_torchvision_anchor_difference_is_only_its_rounding(tv_converted):
    """torchvision truncates the octave sizes to integers and rounds the corners of each cell
    anchor; drdet does neither. Same ordering, same centres (s*j, s*i), at most 1 px apart."""
    tv, cfg, _, _ = tv_converted
    for ours, theirs, sizes in zip(_drdet_cell_anchors(cfg), tv.anchor_generator.cell_anchors,
                                   tv.anchor_generator.sizes):
        assert ours.shape == theirs.shape == (9, 4)
        diff = (ours - theirs).abs().max().item()
        assert 0 < diff <= 1.0, (sizes, diff)
        torch.testing.assert_close(theirs, ours.round(), rtol=0, atol=1.0)
    # torchvision's own rounding rule applied to drdet's unrounded torchvision sizes: exact.
    tv_sizes = [(x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512)]
    for theirs, sizes in zip(tv.anchor_generator.cell_anchors, tv_sizes):
        s = torch.tensor(sizes, dtype=torch.float32)
        r = torch.tensor([0.5, 1.0, 2.0]).sqrt()
        ws, hs = (s[None] / r[:, None]).reshape(-1), (s[None] * r[:, None]).reshape(-1)
        torch.testing.assert_close(theirs, (torch.stack([-ws, -hs, ws, hs], 1) / 2).round())


def test_torchvision_detections_match_after_nms(tv_converted):
    tv, cfg, model, _ = tv_converted
    # Give torchvision drdet's unrounded anchors (the one documented difference, see above).
    tv.anchor_generator.cell_anchors = _drdet_cell_anchors(cfg)
    images = _images()
    with torch.no_grad():
        theirs = tv(images)
        ours = model(images)
    assert cfg.TEST.DETECTIONS_PER_IMG == tv.detections_per_img == 300
    for o, t in zip(ours, theirs):
        assert len(t["boxes"]) > 20  # enough detections to compare
        # torchvision keeps boxes that clipping made empty; drdet drops them (min_size 0). Not
        # the case here, so the outputs must agree exactly.
        widths, heights = (t["boxes"][:, 2:] - t["boxes"][:, :2]).unbind(1)
        assert (widths > 0).all() and (heights > 0).all()
        assert o["boxes"].shape == t["boxes"].shape
        torch.testing.assert_close(o["boxes"], t["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(o["scores"], t["scores"], rtol=0, atol=1e-3)
        assert torch.equal(o["labels"], t["labels"] + 1)  # torchvision 0..79 -> drdet 1..80


def test_torchvision_coco_columns_become_contiguous_labels(tmp_path):
    tv, path = _torchvision_retinanet(91, tmp_path)
    out = str(tmp_path / "coco.pth")
    _converter().convert_file(path, out, source="torchvision", coco_category_ids=True)
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
        _converter().convert_file(path, out, source="maskrcnn-benchmark")


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
                names.update({f"module.{base}downsample.1.{p}": f"{base}downsample.1.{p}"
                              for p in bn})
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
    cfg = get_cfg()  # maskrcnn-benchmark's conventions are drdet's defaults
    cfg.merge_from_list(["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 64,
                         "MODEL.RETINANET.NUM_CONVS", 1])
    model = build_detector(cfg)
    state, names = _mrcnn_retinanet_state(model, num_convs=1)
    assert detect_format(state) == "maskrcnn_benchmark"
    src = str(tmp_path / "model_final.pth")
    torch.save({"model": state, "iteration": 90000, "optimizer": {"state": {}}}, src)
    out = str(tmp_path / "converted.pth")
    _converter().main([src, out])
    data = torch.load(out, weights_only=True)
    assert set(data) == {"model"}
    load_model_state(model, data["model"], strict=True)  # every drdet tensor is provided
    own = model.state_dict()
    assert set(names.values()) == set(own)
    for src_key, dst_key in names.items():
        assert torch.equal(own[dst_key], state[src_key]), (src_key, dst_key)


# ----------------------------------------------------------------------------- ImageNet backbones
def _r50_detector(**overrides):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CONVS", 1,
                         *[x for kv in overrides.items() for x in kv]])
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


def _randomize_bn(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)


def _msra_blobs(model):
    """Detectron's R-50.pkl blob names (hand-written layout), shapes from drdet's body."""
    own = model.state_dict()
    body = "backbone.body."
    names = {"conv1_w": "stem.conv1.weight", "res_conv1_bn_s": "stem.bn1.weight",
             "res_conv1_bn_b": "stem.bn1.bias"}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(blocks):
            for letter, i in zip("abc", (1, 2, 3)):
                pre, dst = f"res{stage}_{b}_branch2{letter}", f"layer{stage - 1}.{b}."
                names[pre + "_w"] = dst + f"conv{i}.weight"
                names[pre + "_bn_s"] = dst + f"bn{i}.weight"
                names[pre + "_bn_b"] = dst + f"bn{i}.bias"
            if b == 0:
                pre, dst = f"res{stage}_0_branch1", f"layer{stage - 1}.0.downsample."
                names.update({pre + "_w": dst + "0.weight", pre + "_bn_s": dst + "1.weight",
                              pre + "_bn_b": dst + "1.bias"})
    rng = np.random.default_rng(0)
    blobs = {k: rng.standard_normal(tuple(own[body + v].shape)).astype(np.float32)
             for k, v in names.items()}
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
    norms = {k.rsplit(".", 1)[0] for k in names.values() if k.endswith("bn1.weight")
             or k.endswith("bn2.weight") or k.endswith("bn3.weight") or k.endswith("1.weight")
             and "downsample" in k}
    assert body_keys == set(names.values()) | {n + s for n in norms
                                               for s in (".running_mean", ".running_var")}
    for blob, key in names.items():
        assert torch.equal(own[key], torch.from_numpy(blobs[blob])), (blob, key)
    for n in norms:
        assert torch.equal(own[n + ".running_mean"], torch.zeros_like(own[n + ".running_mean"]))
        assert torch.equal(own[n + ".running_var"], torch.ones_like(own[n + ".running_var"]))
    # The stem computes Caffe2's affine: relu(conv(x) * s + b), then a 3x3/2 max pool.
    x = torch.randn(1, 3, 32, 32)
    w, s, b = (torch.from_numpy(blobs[k]) for k in ("conv1_w", "res_conv1_bn_s", "res_conv1_bn_b"))
    reference = F.max_pool2d(F.relu(F.conv2d(x, w, stride=2, padding=3) * s[:, None, None]
                                    + b[:, None, None]), 3, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.body.stem(x), reference, rtol=1e-4, atol=1e-4)


def test_detect_format_from_keys():
    t = torch.zeros(1)
    assert detect_format({"conv1.weight": t, "layer1.0.conv1.weight": t, "fc.weight": t}) \
        == "torchvision_resnet"
    assert detect_format({"conv1_w": t, "res2_0_branch2a_w": t}) == "msra"
    assert detect_format({"module.rpn.head.cls_logits.weight": t}) == "maskrcnn_benchmark"
    assert detect_format({"head.classification_head.cls_logits.weight": t}) \
        == "torchvision_retinanet"
    assert detect_format({"backbone.body.stem.conv1.weight": t, "head.cls_logits.weight": t}) \
        == "drdet"
    state = {"backbone.body.stem.conv1.weight": t}
    assert to_drdet_state(state) == state

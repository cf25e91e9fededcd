"""Fine-tuning a detector on other classes (MODEL.RESET_CLASSIFIER): every tensor of MODEL.WEIGHT
but the classifier's last layer is loaded, that layer starts from the loss's prior; the two
class checks (checkpoint vs config, config vs training set) lead to the same settings instead
of sending the user in a circle; and a checkpoint that records no classes still has its class
count (the config's) checked against the dataset."""

import logging
import math
import os

import pytest
import torch
from helpers.tiny import SMALL_HEAD, STEADY, tiny_overrides
from helpers.tiny import SYNTHETIC_CONFIG as CONFIG
from tool_loader import load_tool

from drdet.checkpoint import Checkpointer
from drdet.checkpoint.classes import classifier_keys
from drdet.engine.defaults import load_config
from drdet.modeling import build_detector
from drdet.utils.errors import UserValueError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TV_CONFIG = os.path.join(ROOT, "configs", "torchvision", "retinanet_resnet50_fpn_torchvision.yaml")
TRAIN_SET = "synthetic:4:0:128"  # 5 shape classes
TINY = tiny_overrides(TRAIN_SET, "", max_iter=1, overrides={**SMALL_HEAD, **STEADY})

convert_checkpoint = load_tool("convert_checkpoint")
train_net = load_tool("train_net")
test_net = load_tool("test_net")

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A checkpoint of a 3-class detector (MODEL.NUM_CLASSES 4) that records its classes."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("three")
    model = build_detector(load_config(CONFIG, TINY + ["MODEL.NUM_CLASSES", "4"]))
    ckpt = Checkpointer(model, save_dir=str(folder), save_to_disk=True)
    ckpt.record["classes"] = {"num_classes": 3, "names": ["cat", "dog", "cow"]}
    return ckpt.save("model_final"), model.state_dict()


@pytest.mark.parametrize("arch", ["RetinaNet", "FCOS", "ATSS"])
def test_classifier_is_found_through_the_head(arch):
    cfg = load_config(CONFIG, TINY + ["MODEL.META_ARCHITECTURE", arch])
    model = build_detector(cfg)
    assert classifier_keys(model) == ["head.cls_logits.weight", "head.cls_logits.bias"]
    assert model.head.cls_logits.weight.shape[0] == model.head.num_classes * (
        9 if arch == "RetinaNet" else 1
    )


def test_reset_loads_everything_but_the_classifier(three_classes):
    path, source = three_classes
    cfg = load_config(CONFIG, TINY + ["MODEL.WEIGHT", path, "MODEL.RESET_CLASSIFIER", "True"])
    torch.manual_seed(7)
    model = build_detector(cfg)
    Checkpointer(model).load(path, load_training_state=False, reset_classifier=True)
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith("head.cls_logits."):
            continue
        assert torch.equal(value, source[key]), key
    prior = cfg.MODEL.RETINANET.PRIOR_PROB  # the DR loss's 0.5: bias -log((1 - p) / p) = 0
    bias = state["head.cls_logits.bias"]
    assert bias.shape == (9 * 5,) and torch.allclose(
        bias, torch.full_like(bias, -math.log((1 - prior) / prior))
    )
    weight = state["head.cls_logits.weight"]
    assert weight.shape[0] == 9 * 5 and 0.005 < float(weight.std()) < 0.015  # normal(0, 0.01)


def test_the_class_checks_lead_to_one_setting(three_classes, tmp_path):
    """3 classes in the checkpoint, 5 in the data: with either MODEL.NUM_CLASSES the message
    asks for MODEL.RESET_CLASSIFIER True (and 6); with both, training runs and records the
    data's classes."""
    path = three_classes[0]
    argv = ["--config-file", CONFIG, "--skip-test"] + TINY + ["MODEL.WEIGHT", path]
    out = str(tmp_path / "out")
    with pytest.raises(UserValueError) as asked:
        train_net.main(argv + ["MODEL.NUM_CLASSES", "4", "OUTPUT_DIR", out])
    message = str(asked.value)
    assert "set it to 6" in message and "MODEL.RESET_CLASSIFIER True" in message, message
    with pytest.raises(UserValueError) as asked:
        train_net.main(argv + ["MODEL.NUM_CLASSES", "6", "OUTPUT_DIR", out])
    message = str(asked.value)
    assert "3 classes [cat, dog, cow]" in message and "MODEL.RESET_CLASSIFIER True" in message
    train_net.main(
        argv + ["MODEL.NUM_CLASSES", "6", "MODEL.RESET_CLASSIFIER", "True", "OUTPUT_DIR", out]
    )
    log = open(os.path.join(out, "log.txt")).read()
    assert "head.cls_logits.weight, head.cls_logits.bias of " + path + " not loaded" in log
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert saved["classes"]["num_classes"] == 5
    assert saved["model"]["head.cls_logits.bias"].numel() == 9 * 5


def test_reset_needs_a_weight():
    with pytest.raises(ValueError, match="MODEL.RESET_CLASSIFIER.*MODEL.WEIGHT"):
        load_config(CONFIG, TINY + ["MODEL.RESET_CLASSIFIER", "True"])


def test_converted_torchvision_coco_model_fine_tunes(tmp_path):
    """torchvision's 91-column COCO RetinaNet, converted with --coco-category-ids (80 classes),
    loads into a 5-class model with MODEL.RESET_CLASSIFIER: all but the classifier, which
    starts from the prior."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    convert_checkpoint.main(
        [str(tmp_path / "tv.pth"), str(tmp_path / "coco.pth"), "--coco-category-ids"]
    )
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.NUM_CLASSES",
        "6",
        "MODEL.WEIGHT",
        str(tmp_path / "coco.pth"),
    ]
    cfg = load_config(TV_CONFIG, opts + ["MODEL.RESET_CLASSIFIER", "True"])
    model = build_detector(cfg)
    with pytest.raises(UserValueError, match="80 classes.*MODEL.RESET_CLASSIFIER True"):
        Checkpointer(model).load(cfg.MODEL.WEIGHT, load_training_state=False)
    Checkpointer(model).load(cfg.MODEL.WEIGHT, load_training_state=False, reset_classifier=True)
    state = model.state_dict()
    tv_state = tv.state_dict()
    assert torch.equal(
        state["backbone.body.layer4.2.conv3.weight"],
        tv_state["backbone.body.layer4.2.conv3.weight"],
    )
    assert torch.equal(
        state["head.bbox_pred.weight"], tv_state["head.regression_head.bbox_reg.weight"]
    )
    prior = cfg.MODEL.RETINANET.PRIOR_PROB
    expected = -math.log((1 - prior) / prior)
    assert torch.allclose(state["head.cls_logits.bias"], torch.full((9 * 5,), expected))


def test_unrecorded_classes_must_match_the_dataset(tmp_path):
    """A checkpoint without a class record (converted) evaluated on the 5-class synthetic set
    with MODEL.NUM_CLASSES 5 (4 classes): an error naming the key, the count and the way a
    converted torchvision model maps its background column; nothing is evaluated."""
    opts = tiny_overrides("", "synthetic:2:1:128", overrides=SMALL_HEAD)
    opts += ["MODEL.NUM_CLASSES", "5", "OUTPUT_DIR", str(tmp_path)]
    model = build_detector(load_config(CONFIG, opts))
    torch.save({"model": model.state_dict()}, tmp_path / "old.pth")
    with pytest.raises(UserValueError) as info:
        test_net.main(["--config-file", CONFIG, "MODEL.WEIGHT", str(tmp_path / "old.pth")] + opts)
    message = str(info.value)
    assert "records no classes" in message and "MODEL.NUM_CLASSES 5" in message
    assert "Set MODEL.NUM_CLASSES to 6" in message
    assert "--drop-background-column" in message
    assert not os.path.exists(tmp_path / "inference" / "synthetic_2_1_128" / "metrics.json")


def test_converter_drops_torchvisions_background_column(tmp_path, caplog):
    """fcos_resnet50_fpn(num_classes=4) (torchvision: background + 3 classes): by default
    drdet gets 4 classes and the log says how column 0 maps; --drop-background-column keeps
    torchvision's columns 1..3 as drdet's labels 1..3."""
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    caplog.set_level(logging.INFO)
    convert_checkpoint.main([str(tmp_path / "tv.pth"), str(tmp_path / "all.pth")])
    assert "--drop-background-column" in caplog.text and "MODEL.NUM_CLASSES 5" in caplog.text
    assert "configs/torchvision/fcos_resnet50_fpn_torchvision.yaml" in caplog.text
    convert_checkpoint.main(
        [str(tmp_path / "tv.pth"), str(tmp_path / "fg.pth"), "--drop-background-column"]
    )
    state = torch.load(tmp_path / "fg.pth", weights_only=True)["model"]
    source = tv.state_dict()["head.classification_head.cls_logits.weight"]
    assert torch.equal(state["head.cls_logits.weight"], source[1:])
    assert torch.equal(
        state["head.cls_logits.bias"],
        tv.state_dict()["head.classification_head.cls_logits.bias"][1:],
    )


def test_demo_uses_the_recorded_class_names(tmp_path, synthetic_datasets_root):
    """A 2-class model run by demo.py with a config whose DATASETS.TRAIN (the synthetic set, 5
    classes) is not what it was trained on: the names come from the checkpoint, and the
    training set is not opened (nothing generated under DRDET_DATASETS)."""
    import json

    import cv2
    import numpy as np
    from helpers.tiny import demo_argv

    opts = tiny_overrides("synthetic_train", "", overrides={**SMALL_HEAD, "MODEL.NUM_CLASSES": 3})
    ckpt = Checkpointer(
        build_detector(load_config(CONFIG, opts)), save_dir=str(tmp_path), save_to_disk=True
    )
    ckpt.record["classes"] = {"num_classes": 2, "names": ["cat", "dog"]}
    weights = ckpt.save("model_final")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    before = sorted(os.listdir(synthetic_datasets_root))
    load_tool("demo").main(
        demo_argv(
            ["--input", str(image)], tmp_path / "out", "0.0", opts + ["MODEL.WEIGHT", weights]
        )
    )
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    names = records[0]["class_names"]
    assert names and set(names) <= {"cat", "dog"}
    assert names == [["cat", "dog"][label - 1] for label in records[0]["labels"]]
    assert sorted(os.listdir(synthetic_datasets_root)) == before

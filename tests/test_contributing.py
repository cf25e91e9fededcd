"""The worked examples of CONTRIBUTING.md run as written: its python blocks, in order, register a
loss, a backbone, a detector, a dataset type and an evaluator, and a check then trains, runs and
evaluates through the config alone (in a subprocess, so the registrations do not leak)."""

import os
import re
import subprocess
import sys

from tool_loader import checkout_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import torch
from drdet.config import get_cfg, validate_cfg
from drdet.data import get_dataset
from drdet.data.datasets.synthetic import SyntheticSpec, ensure_dataset
from drdet.engine.inference import evaluate_predictions
from drdet.modeling import build_detector

cfg = get_cfg()
cfg.merge_from_list([
    "MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "SharedTowerRetinaNet",
    "MODEL.BACKBONE.CONV_BODY", "TINY-PYRAMID", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 16,
    "MODEL.SHARED_TOWER.LOSS_TYPE", "BCE", "MODEL.NUM_CLASSES", 3,
])
assert cfg.MODEL.SHARED_TOWER.INFERENCE_TH == 0.1  # the BCE recipe, mapped by the detector
validate_cfg(cfg)
model = build_detector(cfg).train()
assert isinstance(model.head, SharedTowerHead) and isinstance(model.backbone, TinyPyramid)
assert abs(model.head.cls_logits.bias[0].sigmoid().item() - 0.01) < 1e-6  # the recipe's prior
assert isinstance(model.loss.cls_loss, SigmoidBCELoss)
images = [torch.rand(3, 64, 80) * 255, torch.rand(3, 72, 64) * 255]
targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
           {"boxes": torch.tensor([[10.0, 8.0, 30.0, 60.0]]), "labels": torch.tensor([1])}]
losses = model(images, targets)
total = sum(losses.values())
assert torch.isfinite(total)
total.backward()
assert model.head.tower[0].weight.grad.abs().sum() > 0
assert model.backbone.stem.weight.grad.abs().sum() > 0
model.eval()
with torch.no_grad():
    out = model(images)
assert len(out) == 2 and out[0]["boxes"].shape[1] == 4

folder = ensure_dataset(SyntheticSpec(num_images=3, seed=4, image_size=64, min_object_size=8,
                                      max_object_size=32),
                        os.path.join(os.environ["DRDET_DATASETS"], "shapes", "val"))
by_form = get_dataset("cocodir:" + folder, None, is_train=False)
by_name = get_dataset("shapes_val", None, is_train=False)
assert len(by_form) == len(by_name) == 3
by_form.evaluators = ("coco", "detections")
ids = [int(by_form.get_img_info(i)["id"]) for i in range(3)]
predictions = {i: {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]] * k).reshape(-1, 4),
                   "scores": torch.full((k,), 0.5), "labels": torch.ones(k, dtype=torch.long)}
               for i, k in zip(ids, (0, 1, 2))}
metrics = evaluate_predictions(by_form, predictions)
assert metrics["dets_per_image"] == 1.0, metrics
assert list(metrics)[:6] == ["AP", "AP50", "AP75", "APs", "APm", "APl"], metrics
from drdet.engine.defaults import load_config
from drdet.config import loss_setup

assert loss_setup("BCE", "RetinaNet") == {
    "MODEL.RETINANET.PRIOR_PROB": 0.01, "MODEL.RETINANET.INFERENCE_TH": 0.1}
import yaml

plain = os.path.join(os.environ["DRDET_DATASETS"], "bce.yaml")
with open(plain, "w") as f:
    yaml.safe_dump({"MODEL": {"RETINANET": {"LOSS_TYPE": "BCE", "NUM_CLASSES": 3}}}, f)  # the old key, moved
assert load_config(plain).MODEL.RETINANET.INFERENCE_TH == 0.1  # the setup (default 0.05)
assert load_config(plain, ["MODEL.RETINANET.INFERENCE_TH", "0.3"]).MODEL.RETINANET.INFERENCE_TH == 0.3
assert load_config(plain, ["MODEL.RETINANET.PRIOR_PROB", "0.2"]).MODEL.RETINANET.PRIOR_PROB == 0.2
bad = get_cfg()
bad.merge_from_list(["MODEL.META_ARCHITECTURE", "SharedTowerRetinaNet",
                     "MODEL.SHARED_TOWER.PRIOR_PROB", 1.5])
try:
    validate_cfg(bad)
except ValueError as err:
    assert "MODEL.SHARED_TOWER.PRIOR_PROB" in str(err), err
else:
    raise AssertionError("the detector's own check did not run")
scores, labels = model.classification_scores(images, targets)
assert scores.shape[:2] == labels.shape and int((labels > 0).sum()) > 0
print("CONTRIBUTING OK")
"""


def test_contributing_examples_run(tmp_path):
    with open(os.path.join(ROOT, "CONTRIBUTING.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) == 6
    script = tmp_path / "examples.py"
    script.write_text("import os\n" + "\n".join(blocks) + CHECK)
    env = checkout_env(DRDET_DATASETS=str(tmp_path / "datasets"))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CONTRIBUTING OK" in result.stdout

"""FCOS end to end through tools/train_net.py on a tiny synthetic set (CPU), with the focal loss
and with the DR loss: the loss goes down, and the final evaluation (COCO metrics) is returned
and written to metrics.jsonl. Slow-marked: about 4 CPU-minutes for both losses on the 2-core
machine (15 minutes of wall time when 5 workers share it)."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import train_net  # noqa: E402

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")

TRAIN_SET, TEST_SET = "synthetic:16:0:128", "synthetic:5:1:128"
CONFIGS = {
    "FOCAL": os.path.join(ROOT, "configs", "synthetic", "fcos_R-18-FPN_synthetic.yaml"),
    "DR": os.path.join(ROOT, "configs", "synthetic", "dr_fcos_R-18-FPN_synthetic.yaml"),
}
TINY = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.FCOS.NUM_CONVS",
    "1",
    "DATASETS.TRAIN",
    f"('{TRAIN_SET}',)",
    "DATASETS.TEST",
    f"('{TEST_SET}',)",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "INPUT.HORIZONTAL_FLIP_PROB_TRAIN",
    "0.0",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.BASE_LR",
    "0.01",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.MAX_ITER",
    "30",
    "SOLVER.STEPS",
    "(100,)",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "SOLVER.LOG_PERIOD",
    "1",
    "TEST.IMS_PER_BATCH",
    "5",
]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["FOCAL", "DR"])
def test_fcos_trains_and_evaluates(loss_type, tmp_path):
    results = train_net.main(
        ["--config-file", CONFIGS[loss_type], *TINY, "OUTPUT_DIR", str(tmp_path)]
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30 and {"loss_cls", "loss_reg", "loss_centerness"} <= set(records[0])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (loss_type, first, last)
    metrics = results[TEST_SET]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics)
    assert records[-1]["iteration"] == 30 and records[-1][f"eval/{TEST_SET}/AP"] == metrics["AP"]
    assert os.path.isfile(tmp_path / "model_final.pth")

"""FCOS and ATSS end to end through tools/train_net.py on a tiny synthetic set (CPU): FCOS with
the focal and the DR loss, ATSS with the DR loss (its focal loss runs end to end in
tests/test_compare_losses.py): the loss goes down, and the final evaluation (COCO metrics) is
returned and written to metrics.jsonl. Slow-marked: FCOS's two runs take about 4 CPU-minutes
on the 2-core machine (15 minutes of wall time when 5 workers share it); ATSS's took 317 s of
wall time at load 8.5."""

import json
import os

import pytest
from helpers.tiny import STEADY, tiny_overrides  # tests/ is on sys.path under pytest
from tool_loader import ROOT, load_tool

train_net = load_tool("train_net")

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")

TRAIN_SET, TEST_SET = "synthetic:16:0:128", "synthetic:5:1:128"
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic")
CONFIGS = {
    ("FCOS", "FOCAL"): os.path.join(SYNTHETIC, "fcos_R-18-FPN_synthetic.yaml"),
    ("FCOS", "DR"): os.path.join(SYNTHETIC, "dr_fcos_R-18-FPN_synthetic.yaml"),
    ("ATSS", "DR"): os.path.join(SYNTHETIC, "dr_atss_R-18-FPN_synthetic.yaml"),
}


def _tiny(node):
    return tiny_overrides(
        TRAIN_SET,
        TEST_SET,
        ims_per_batch=4,
        max_iter=30,
        test_ims_per_batch=5,
        overrides={f"MODEL.{node}.NUM_CONVS": 1, **STEADY, "SOLVER.BASE_LR": "0.01"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("node,loss_type", sorted(CONFIGS))
def test_dense_detector_trains_and_evaluates(node, loss_type, tmp_path):
    argv = ["--config-file", CONFIGS[node, loss_type], *_tiny(node), "OUTPUT_DIR", str(tmp_path)]
    results = train_net.main(argv)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30 and {"loss_cls", "loss_reg", "loss_centerness"} <= set(records[0])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (node, loss_type, first, last)
    metrics = results[TEST_SET]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics)
    assert records[-1]["iteration"] == 30 and records[-1][f"eval/{TEST_SET}/AP"] == metrics["AP"]
    assert os.path.isfile(tmp_path / "model_final.pth")

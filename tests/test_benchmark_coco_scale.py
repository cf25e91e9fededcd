"""tools/benchmark_coco_scale.py end to end on a set 1/500 of COCO's size, the memory readers it
uses against /proc's own totals, and the generated COCO-format sets."""

import json
import os
import subprocess
import sys

import pytest

from drdet.data.coco_scale import COCO_CATEGORY_IDS, CocoScaleSpec, coco_scale_dict
from drdet.data.datasets.coco_json import load_coco_json
from drdet.utils.memory import child_pids, pss_mib, smaps_rollup, uss_mib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark_coco_scale.py")


def test_memory_readers_agree_with_proc():
    fields = smaps_rollup()
    assert fields["Rss"] >= fields["Pss"] > 0
    private = (fields["Private_Clean"] + fields["Private_Dirty"]) / 2**20
    assert uss_mib() == pytest.approx(private, abs=2)  # read again: a few pages may change
    assert pss_mib() > uss_mib() * 0.5
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
        assert 0 < uss_mib(child.pid) < pss_mib(child.pid) + 1
    finally:
        child.kill()
        child.wait()
    assert child.pid not in child_pids(os.getpid())


def test_generated_set_has_the_spec_and_passes_the_checks(tmp_path):
    spec = CocoScaleSpec(num_images=300, num_boxes=2000, crowd_fraction=0.05, seed=3)
    data = coco_scale_dict(spec)
    assert len(data["images"]) == 300 and len(data["annotations"]) == 2000
    assert [c["id"] for c in data["categories"]] == list(COCO_CATEGORY_IDS)
    assert len(COCO_CATEGORY_IDS) == 80 and max(COCO_CATEGORY_IDS) == 90
    assert 40 < sum(a["iscrowd"] for a in data["annotations"]) < 160
    assert all(len(a["segmentation"][0]) == 24 for a in data["annotations"])
    with_boxes = {a["image_id"] for a in data["annotations"]}
    assert 250 <= len(with_boxes) < 300  # some images without a box
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    assert load_coco_json(str(path))["annotations"][0]["bbox"] == data["annotations"][0]["bbox"]
    assert coco_scale_dict(spec) == data  # deterministic


@pytest.mark.slow
def test_tool_measures_loader_memory_and_both_backends(tmp_path):
    out_json = tmp_path / "out.json"
    argv = ["--data-dir", str(tmp_path / "data"), "--scale", "0.002", "--workers", "1"]
    argv += ["--batch", "2", "--batches", "1,3", "--detections", "5", "--json", str(out_json)]
    proc = subprocess.run(
        [sys.executable, TOOL, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(out_json.read_text())
    (loader,) = out["loader"]
    assert loader["drdet"] == os.path.join(ROOT, "drdet", "__init__.py")
    assert loader["images"] > 200 and loader["build_seconds"] > 0
    assert [b["batch"] for b in loader["batches"]] == [1, 3]
    for b in loader["batches"]:
        assert b["workers"] == 1 and b["workers_uss_mib"] > 1 and b["load"] >= 0
    assert loader["after_build"]["main_pss_mib"] > 0
    backends = [r["backend"] for r in out["evaluation"]]
    assert backends == ["hotcoco", "pycocotools"]
    hot, ref = (r["metrics"] for r in out["evaluation"])
    assert hot == pytest.approx(ref, abs=1e-6, nan_ok=True) and 0 < ref["AP"] < 1
    assert "largest difference to the first: 0" in proc.stdout

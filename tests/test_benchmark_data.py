"""tools/benchmark_data.py: the data-loading throughput tool runs end to end on a few images."""

import json
import os
import re
import subprocess
import sys

from tool_loader import checkout_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark_data.py")


def test_benchmark_data_prints_and_writes_images_per_second(tmp_path):
    out_json = tmp_path / "data.json"
    env = checkout_env(DRDET_DATASETS=str(tmp_path / "untouched"))
    proc = subprocess.run(
        [
            sys.executable,
            TOOL,
            "--synthetic-images",
            "6",
            "--synthetic-size",
            "128",
            "--images",
            "4",
            "--batch",
            "2",
            "--warmup",
            "1",
            "--workers",
            "0,1",
            "--json",
            str(out_json),
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "INPUT.MAX_SIZE_TRAIN",
            "128",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = re.findall(r"workers (\d+): +([\d.]+) images/s", proc.stdout)
    assert [w for w, _ in lines] == ["0", "1"] and all(float(r) > 0 for _, r in lines)
    assert "generated synthetic:6:0:128" in proc.stdout

    data = json.loads(out_json.read_text())
    assert data["dataset"] == "synthetic:6:0:128" and data["batch"] == 2
    results = data["results"]
    assert [r["workers"] for r in results] == [0, 1]
    for r in results:
        assert r["images"] >= 2 and r["seconds"] > 0
        assert abs(r["images_per_s"] - r["images"] / r["seconds"]) < 1e-6 * r["images_per_s"]
        # 128 px images resized to a shorter side of 96: 96 x 96
        assert abs(r["mean_megapixels"] - 96 * 96 / 1e6) < 1e-9
    # the synthetic set went to a temporary folder, removed afterwards; DRDET_DATASETS untouched
    assert not (tmp_path / "untouched").exists()
    tmp_folder = re.search(r"generated \S+ in (\S+) ", proc.stdout).group(1)
    assert not os.path.exists(tmp_folder)

"""tools/benchmark_model.py runs both models' inference the way their users do, on tiny inputs."""

import json
import os
import re
import sys

import pytest
import torch
from helpers.tiny import benchmark_model_args  # tests/ is on sys.path under pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))


@pytest.mark.slow
def test_benchmark_model_inference_rows_and_json(tmp_path, capsys, monkeypatch):
    import benchmark_model

    from drdet.modeling import inference_copy

    prepared = []

    def spy(model, *args, **kwargs):
        prepared.append(model)
        return inference_copy.prepare_for_inference(model, *args, **kwargs)

    # drdet's side goes through prepare_for_inference, as the Predictor and the test loop do
    monkeypatch.setattr(benchmark_model, "prepare_for_inference", spy)
    out = tmp_path / "model.json"
    threads = torch.get_num_threads()
    try:
        rows = benchmark_model.main(
            benchmark_model_args("inference", "--score-thresh", "0.005", "--json", str(out))
        )
    finally:
        torch.set_num_threads(threads)
    assert len(prepared) == 1 and prepared[0].training  # the built model itself is not changed
    assert [r[0] for r in rows] == [
        "inference per image (torchvision)",
        "inference per image (drdet)",
    ]
    printed = capsys.readouterr().out
    # same weights and images: both models return the same number of detections
    counts = re.search(r"detections per image: drdet \[(\d+)\], torchvision \[(\d+)\]", printed)
    assert "ratio" in printed and counts and counts.group(1) == counts.group(2)
    assert int(counts.group(1)) > 0
    data = json.loads(out.read_text())
    assert data["score_thresh"] == 0.005 and data["size"] == [64, 96]
    tv, ours = data["rows"]
    assert tv["ratio"] is None and ours["ratio"] == pytest.approx(ours["ms"] / tv["ms"])


@pytest.mark.slow
def test_benchmark_model_training_rows_memory_and_json(tmp_path, capsys):
    import benchmark_model

    out = tmp_path / "train.json"
    threads = torch.get_num_threads()
    try:
        rows = benchmark_model.main(
            benchmark_model_args("train", "--direct-conv", "--profile", "--json", str(out))
        )
    finally:
        torch.set_num_threads(threads)
    assert [r[0] for r in rows] == [
        "train step, focal (torchvision)",
        "train step, focal (drdet)",
        "train step, DR (drdet)",
        "train step, DR, direct convolutions (drdet)",
    ]
    printed = capsys.readouterr().out
    # --profile: one operator table per model; the convolutions are among the top operators
    assert printed.count("Self CPU time total") == 4 and "convolution" in printed
    data = json.loads(out.read_text())
    for row, written in zip(rows, data["rows"]):
        # a training step keeps at least the activations of a ResNet-50 on a 64 x 96 image
        assert written["peak_mib"] == pytest.approx(row[3]) and row[3] > 10
        assert written["ratio"] is None or written["ratio"] == pytest.approx(
            written["ms"] / data["rows"][0]["ms"]
        )

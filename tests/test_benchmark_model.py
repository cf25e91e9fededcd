"""tools/benchmark_model.py runs both models' inference the way their users do, on tiny inputs."""

import json
import re

import pytest
from helpers.tiny import benchmark_model_args  # tests/ is on sys.path under pytest
from tool_loader import load_tool

benchmark_model = load_tool("benchmark_model")


@pytest.mark.slow
@pytest.mark.usefixtures("keep_num_threads")
def test_benchmark_model_inference_rows_and_json(tmp_path, capsys, monkeypatch):
    from drdet.engine.model_benchmark import measure
    from drdet.modeling import inference_copy

    prepared = []

    def spy(model, *args, **kwargs):
        prepared.append(model)
        return inference_copy.prepare_for_inference(model, *args, **kwargs)

    # drdet's side goes through prepare_for_inference, as the Predictor and the test loop do
    monkeypatch.setattr(measure, "prepare_for_inference", spy)
    out = tmp_path / "model.json"
    rows = benchmark_model.main(
        benchmark_model_args("inference", "--score-thresh", "0.005", "--json", str(out))
    )
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
@pytest.mark.usefixtures("keep_num_threads")
def test_benchmark_model_training_rows_memory_and_json(tmp_path, capsys):
    out = tmp_path / "train.json"
    rows = benchmark_model.main(
        benchmark_model_args("train", "--direct-conv", "--profile", "--json", str(out))
    )
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


@pytest.mark.slow
@pytest.mark.usefixtures("keep_num_threads")
def test_benchmark_model_times_drdet_without_its_extension(monkeypatch):
    """--without-extension adds rows whose calls run the pure-PyTorch forms of the ops (counted
    here), beside the rows with the extension's kernels (which do not call them)."""
    from drdet.layers import extension_in_use, pure_ops

    calls = {"dr_loss": 0, "sigmoid_focal_loss": 0}
    for name in calls:
        original = getattr(pure_ops, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            assert not extension_in_use()
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(pure_ops, name, counting)
    rows = benchmark_model.main(benchmark_model_args("train,inference", "--without-extension"))
    assert [r[0] for r in rows] == [
        "train step, focal (torchvision)",
        "train step, focal (drdet)",
        "train step, DR (drdet)",
        "train step, focal, without the extension (drdet)",
        "train step, DR, without the extension (drdet)",
        "inference per image (torchvision)",
        "inference per image (drdet)",
        "  same, without the extension (pure-PyTorch ops)",
    ]
    # each pure row ran once per warm-up-free repetition and once for its peak memory
    assert calls == {"dr_loss": 2, "sigmoid_focal_loss": 2}


@pytest.mark.slow
@pytest.mark.usefixtures("keep_num_threads")
def test_benchmark_model_puts_drdet_detectors_side_by_side(tmp_path):
    """--detectors: drdet's RetinaNet, FCOS and ATSS (DR loss), each row's ratio its time over
    the first detector's, as written in the json."""
    out = tmp_path / "detectors.json"
    args = benchmark_model_args("train", "--detectors", "retinanet,fcos,atss", "--json", str(out))
    rows = benchmark_model.main(args)
    archs = ("retinanet", "fcos", "atss")
    assert [r[0] for r in rows] == [f"train step, DR, {a} (drdet)" for a in archs] + [
        f"inference per image, {a} (drdet)" for a in archs
    ]
    written = json.loads(out.read_text())["rows"]
    for first, k in ((0, range(3)), (3, range(3, 6))):
        for i in k:
            assert rows[i][2] == pytest.approx(rows[i][1] / rows[first][1])
            assert written[i]["ratio"] == pytest.approx(rows[i][2])

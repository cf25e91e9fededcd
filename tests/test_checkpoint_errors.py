"""Load errors that say what is wrong (not a checkpoint, truncated or damaged, a real legacy
pickle), resume past a damaged last checkpoint, and the classes a checkpoint records, checked
against the config, the dataset and the model."""

import logging
import os
import pickle

import pytest
import torch
from helpers.tiny import SMALL_HEAD, tiny_overrides  # tests/ is on sys.path under pytest
from tool_loader import load_tool  # tests/tool_loader.py (tests/ is on sys.path under pytest)
from torch import nn

from drdet.checkpoint import Checkpointer, check_classes, load_checkpoint_file
from drdet.engine.defaults import load_config
from drdet.utils.errors import CheckpointError, UserInputError, UserValueError, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")


class _Head(nn.Module):
    """The two 1x1 convolutions of a RetinaNet head that fix its class count (1 anchor)."""

    def __init__(self, num_classes):
        super().__init__()
        self.cls_logits = nn.Conv2d(2, num_classes, 1)
        self.bbox_pred = nn.Conv2d(2, 4, 1)


class _Detector(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.head = _Head(num_classes)


def _saved(tmp_path, name="good.pth", legacy=False):
    path = str(tmp_path / name)
    torch.save({"model": _Detector().state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return len(data) // 2


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("this is a README, not weights\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(str(path))
    message = str(info.value)
    assert "not a PyTorch checkpoint (zip or legacy pickle)" in message
    assert str(path) in message and "(30 bytes)" in message and "allow_pickle" not in message
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth is empty \\(0 bytes\\)"):
        load_checkpoint_file(str(empty))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_truncated_checkpoint_is_damaged_not_a_pickle(tmp_path, legacy, allow_pickle):
    path = _saved(tmp_path, legacy=legacy)
    size = _truncate(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(path, allow_pickle=allow_pickle)
    message = str(info.value)
    assert f"{path} ({size} bytes) is truncated or damaged" in message
    assert "allow_pickle" not in message and "pickled Python objects" not in message


def test_real_legacy_pickle_is_told_to_use_allow_pickle(tmp_path):
    path = str(tmp_path / "old.pkl")
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": torch.ones(2).numpy()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="holds pickled Python objects.*--allow-pickle"):
        load_checkpoint_file(path)
    assert torch.equal(
        load_checkpoint_file(path, allow_pickle=True)["model"]["conv1_w"], torch.ones(2)
    )


def test_convert_checkpoint_reports_a_text_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DRDET_DEBUG", raising=False)
    src = tmp_path / "notes.pth"
    src.write_text("hello\n")
    tool = load_tool("convert_checkpoint")
    code = run_main(tool.main, [str(src), str(tmp_path / "out.pth")], prog="convert")
    assert code == 2
    assert capsys.readouterr().err.startswith(
        f"convert: error: {src} (6 bytes) is not a PyTorch checkpoint (zip or legacy pickle)"
    )


def _run_dir(tmp_path):
    ckpt = Checkpointer(_Detector(), save_dir=str(tmp_path), save_to_disk=True)
    for iteration in (1, 2, 3):
        with torch.no_grad():
            ckpt.model.head.cls_logits.bias.fill_(iteration)
        ckpt.save(f"model_{iteration:07d}", iteration=iteration)
    return ckpt


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    _run_dir(tmp_path)
    _truncate(str(tmp_path / "model_0000003.pth"))
    fresh = Checkpointer(_Detector(), save_dir=str(tmp_path), save_to_disk=True)
    with caplog.at_level(logging.WARNING):
        extra = fresh.resume()
    assert extra["iteration"] == 2
    assert torch.equal(fresh.model.head.cls_logits.bias, torch.full((3,), 2.0))
    assert "model_0000003.pth" in caplog.text and "model_0000002.pth" in caplog.text


def test_resume_with_no_intact_checkpoint_says_so(tmp_path):
    _run_dir(tmp_path)
    for iteration in (1, 2, 3):
        _truncate(str(tmp_path / f"model_{iteration:07d}.pth"))
    with pytest.raises(CheckpointError, match="no other intact model_XXXXXXX.pth"):
        Checkpointer(_Detector(), save_dir=str(tmp_path), save_to_disk=True).resume()


def test_class_count_mismatch_is_said_in_words(tmp_path):
    path = _saved(tmp_path)  # 3 classes
    with pytest.raises(
        UserValueError,
        match="has 3 classes, config MODEL.NUM_CLASSES is 6 \\(5 classes \\+ background\\)",
    ):
        Checkpointer(_Detector(num_classes=5)).load(path, load_training_state=False)


def test_checkpoint_records_its_classes_and_they_are_checked(tmp_path, caplog):
    ckpt = Checkpointer(_Detector(), save_dir=str(tmp_path), save_to_disk=True)
    ckpt.record["classes"] = {"num_classes": 3, "names": ["a", "b", "c"]}
    path = ckpt.save("model_final")
    record = torch.load(path, weights_only=True)["classes"]
    assert record == {"num_classes": 3, "names": ["a", "b", "c"]}

    cfg = load_config(CONFIG, ["MODEL.NUM_CLASSES", "6"])
    with pytest.raises(
        UserValueError,
        match=r"trained on 3 classes \[a, b, c\]; config "
        r"MODEL.NUM_CLASSES is 6",
    ):
        check_classes(record, path, cfg)
    check_classes(record, path, load_config(CONFIG, ["MODEL.NUM_CLASSES", "4"]))

    class FiveShapes:
        name = "shapes"
        class_names = ["a", "b", "c", "d", "e"]

    with pytest.raises(
        UserInputError,
        match=r"trained on 3 classes \[a, b, c\]; dataset shapes "
        r"has 5 classes \[a, b, c, d, e\]",
    ):
        check_classes(record, path, dataset=FiveShapes())
    FiveShapes.class_names = ["a", "b", "x"]  # same count, other names
    with pytest.raises(UserValueError, match=r"has 3 classes \[a, b, x\]"):
        check_classes(record, path, dataset=FiveShapes())
    with pytest.raises(
        UserValueError, match="old.pth records no classes.*Set MODEL.NUM_CLASSES to 4"
    ):
        check_classes(None, "old.pth", cfg, dataset=FiveShapes())  # 5 + 1 vs 3 categories
    with caplog.at_level(logging.WARNING):
        check_classes(
            None, "old.pth", load_config(CONFIG, ["MODEL.NUM_CLASSES", "4"]), FiveShapes()
        )
    assert "old.pth records no classes" in caplog.text


TINY = tiny_overrides(
    "synthetic:4:0:128", "synthetic:2:1:128", max_iter=1, warmup_iters=None, overrides=SMALL_HEAD
)


@pytest.mark.usefixtures("synthetic_datasets_root")
def test_test_net_refuses_a_dataset_with_other_classes(tmp_path):
    """A 3-class model evaluated on the 5-class synthetic set fails, naming both."""
    from drdet.modeling import build_detector

    overrides = TINY + ["MODEL.NUM_CLASSES", "4", "OUTPUT_DIR", str(tmp_path)]
    ckpt = Checkpointer(
        build_detector(load_config(CONFIG, overrides)), save_dir=str(tmp_path), save_to_disk=True
    )
    ckpt.record["classes"] = {"num_classes": 3, "names": ["cat", "dog", "cow"]}
    path = ckpt.save("model_final")
    with pytest.raises(
        UserValueError,
        match=r"trained on 3 classes \[cat, dog, cow\]; dataset "
        r"synthetic:2:1:128 has 5 classes \[",
    ):
        load_tool("test_net").main(["--config-file", CONFIG, "MODEL.WEIGHT", path] + overrides)
    assert not os.path.exists(tmp_path / "inference" / "synthetic_2_1_128" / "metrics.json")


@pytest.mark.slow
@pytest.mark.usefixtures("synthetic_datasets_root")
def test_train_net_records_the_training_set_classes(tmp_path):
    from drdet.data.catalog import get_dataset

    load_tool("train_net").main(
        ["--config-file", CONFIG, "--skip-test", "OUTPUT_DIR", str(tmp_path)] + TINY
    )
    record = torch.load(str(tmp_path / "model_final.pth"), weights_only=True)["classes"]
    names = get_dataset("synthetic:4:0:128", transforms=None, is_train=False).class_names
    assert record == {"num_classes": len(names), "names": list(names)} and len(names) == 5

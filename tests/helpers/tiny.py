"""The tests' tiny training set-ups in one place: config override lists (KEY VALUE ... as
tools/train_net.py takes them) for CPU runs on a few small synthetic images, the command line
that starts tools/train_net.py in a subprocess, and stand-ins for a detector and a loss."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

import torch
from torch import nn

from drdet.config import get_cfg, validate_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC_CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")

# A RetinaNet head of one conv on 64-channel FPN maps: the cheapest detector the tests train.
SMALL_HEAD: dict[str, object] = {
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 64,
    "MODEL.RETINANET.NUM_CONVS": 1,
}
# Deterministic data (no flips), one learning rate throughout, no periodic checkpoint, a log
# line every iteration.
STEADY: dict[str, object] = {
    "INPUT.HORIZONTAL_FLIP_PROB_TRAIN": "0.0",
    "SOLVER.STEPS": "(100,)",
    "SOLVER.CHECKPOINT_PERIOD": 1000,
    "SOLVER.LOG_PERIOD": 1,
}


def small_detector_cfg(*overrides: object, node: str = "MODEL.RETINANET"):
    """A validated config of a small detector on the CPU: ResNet-18-FPN with 32 channels, one
    conv per tower (`node`.NUM_CONVS: the detector's node), 3 object classes; then `overrides`
    (KEY, VALUE, ...)."""
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.BACKBONE.CONV_BODY",
            "R-18-FPN-RETINANET",
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS",
            32,
            f"{node}.NUM_CONVS",
            1,
            "MODEL.NUM_CLASSES",
            4,
            *overrides,
        ]
    )
    return validate_cfg(cfg)


def saved_detector(folder, overrides: list[str], config: str = SYNTHETIC_CONFIG) -> str:
    """folder/model.pth: {"model": state dict} of the detector of `config` + `overrides`, built
    with seed 0 (untrained weights for the tools' tests). Returns its path."""
    from drdet.engine.defaults import load_config
    from drdet.modeling import build_detector

    torch.manual_seed(0)
    path = os.path.join(str(folder), "model.pth")
    torch.save({"model": build_detector(load_config(config, overrides)).state_dict()}, path)
    return path


def datasets_value(name: str) -> str:
    """DATASETS.TRAIN / DATASETS.TEST value for one dataset name, or "()" for none ("")."""
    return f"('{name}',)" if name else "()"


def as_argv(overrides: Mapping[str, object]) -> list[str]:
    """{KEY: value} -> [KEY, str(value), ...] in the mapping's order."""
    return [str(item) for key, value in overrides.items() for item in (key, value)]


def tiny_overrides(
    train_set: str | None = "synthetic:8:0:128",
    test_set: str | None = "synthetic:2:1:128",
    ims_per_batch: int | None = 2,
    max_iter: int | None = None,
    *,
    size: int = 128,
    test_size: bool = True,
    device: str | None = "cpu",
    warmup_iters: int | None = 0,
    test_ims_per_batch: int | None = 2,
    overrides: Mapping[str, object] | None = None,
) -> list[str]:
    """Config overrides for a CPU run at `size` x `size` pixels with no DataLoader workers.

    train_set / test_set: dataset names for DATASETS.TRAIN / DATASETS.TEST ("" gives "()");
    None leaves the key out, as do None for ims_per_batch (SOLVER), max_iter (SOLVER),
    device (MODEL.DEVICE), warmup_iters (SOLVER) and test_ims_per_batch (TEST).
    test_size=False leaves out INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST.
    overrides: further {KEY: value}, applied last, e.g.
    `overrides={**SMALL_HEAD, "SOLVER.BASE_LR": "0.01"}`; a value of None removes a key.
    Returns [KEY, VALUE, ...] (all str); the order of keys carries no meaning.
    """
    cfg: dict[str, object] = {
        "MODEL.DEVICE": device,
        "DATASETS.TRAIN": None if train_set is None else datasets_value(train_set),
        "DATASETS.TEST": None if test_set is None else datasets_value(test_set),
        "INPUT.MIN_SIZE_TRAIN": f"({size},)",
        "INPUT.MAX_SIZE_TRAIN": size,
        "INPUT.MIN_SIZE_TEST": size if test_size else None,
        "INPUT.MAX_SIZE_TEST": size if test_size else None,
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": ims_per_batch,
        "SOLVER.MAX_ITER": max_iter,
        "SOLVER.WARMUP_ITERS": warmup_iters,
        "TEST.IMS_PER_BATCH": test_ims_per_batch,
    }
    cfg.update(overrides or {})
    return as_argv({key: value for key, value in cfg.items() if value is not None})


def train_net_command(config: str = SYNTHETIC_CONFIG, *args: str) -> list[str]:
    """[python, tools/train_net.py, --config-file, config, --skip-test, *args]: the start of a
    train_net subprocess's command line."""
    script = os.path.join(ROOT, "tools", "train_net.py")
    return [sys.executable, script, "--config-file", config, "--skip-test", *args]


def benchmark_model_args(parts: str, *more: str) -> list[str]:
    """tools/benchmark_model.py arguments for one timed repetition, no warm-up, of `parts`
    ("inference" / "train") on a batch of one 64 x 96 (h x w) image, then `more`."""
    size = ["--size", "64", "96"]
    return ["--parts", parts, "--batch", "1", *size, "--warmup", "0", "--reps", "1", *more]


def demo_argv(
    source: list[str],
    output: object,
    threshold: str,
    opts: list[str],
    config: str = SYNTHETIC_CONFIG,
) -> list[str]:
    """tools/demo.py arguments: --config-file config, the `source` flags (--input ... / --video
    ... / --webcam ...), --output output, --confidence-threshold threshold, then the config
    overrides `opts`."""
    head = ["--config-file", config, *source, "--output", str(output)]
    return head + ["--confidence-threshold", threshold, *opts]


class ToyDetector(nn.Module):
    """A stand-in detector for the training loop: a loss dict from one parameter w,
    loss_cls = 2 w and loss_reg = 0.5 w + drift * (calls so far); loss_reg is NaN at call
    ``nan_at`` (1-based)."""

    def __init__(self, nan_at: int = -1, drift: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls = 0
        self.nan_at = nan_at
        self.drift = drift

    def forward(self, images, targets):
        self.calls += 1
        reg = self.w * 0.5
        if self.drift:
            reg = reg + self.drift * self.calls
        if self.calls == self.nan_at:
            reg = reg * math.nan
        return {"loss_cls": self.w * 2.0, "loss_reg": reg}


class RecordingLoss:
    """A stand-in classification loss: records (labels, float(normalizer)) of each call in
    ``calls`` and returns 0 (with a graph to the logits)."""

    def __init__(self):
        self.calls = []

    def __call__(self, logits, labels, normalizer):
        self.calls.append((labels.clone(), float(normalizer)))
        return logits.sum() * 0

"""The SPEED.* switches (drdet/engine/speed.py): off by default, validated, and neutral for
checkpoints (same keys, same values, loadable with the switches flipped)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers.tiny import SMALL_HEAD, STEADY, tiny_overrides  # tests/ is on sys.path
from torch import nn

from drdet.checkpoint import Checkpointer
from drdet.config import get_cfg, validate_cfg
from drdet.engine.speed import amp_dtype, apply_speed_switches, to_channels_last
from drdet.engine.train_step import TrainStep
from drdet.modeling import build_detector
from drdet.modeling.losses import build_classification_loss
from drdet.solver import make_lr_scheduler, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg


def test_switches_are_off_by_default_and_validated():
    speed = get_cfg().SPEED
    assert (speed.CHANNELS_LAST, speed.COMPILE, speed.CUDNN_BENCHMARK, speed.DEFER_CHECKS) == (
        False,
        False,
        False,
        False,
    )
    assert speed.AMP_DTYPE == "float16"  # SOLVER.AMP's behaviour before the key
    cfg = get_cfg()
    cfg.merge_from_list(["SPEED.AMP_DTYPE", "fp8"])
    with pytest.raises(ValueError, match=r"SPEED\.AMP_DTYPE"):
        validate_cfg(cfg)


def test_amp_dtype():
    cpu = torch.device("cpu")
    assert amp_dtype("float16", cpu) == torch.float16
    assert amp_dtype("bfloat16", cpu) == torch.bfloat16
    assert amp_dtype("auto", cpu) == torch.float16  # bf16 only where a CUDA card supports it
    with pytest.raises(ValueError, match="SPEED.AMP_DTYPE"):
        amp_dtype("half", cpu)


def test_bfloat16_amp_needs_no_loss_scaling():
    cfg = _cfg("SOLVER.AMP", True, "SPEED.AMP_DTYPE", "bfloat16")
    model = nn.Linear(2, 2)
    opt = make_optimizer(cfg, model)
    step = TrainStep(cfg, model, opt, make_lr_scheduler(cfg, opt), torch.device("cuda"))
    assert step.use_amp and step.amp_dtype == torch.bfloat16
    assert not step.scaler.is_enabled()


def _model(**opts):
    torch.manual_seed(0)
    return build_detector(_cfg(*[x for kv in opts.items() for x in kv])).eval()


@pytest.mark.slow
def test_channels_last_checkpoint_loads_without_it(tmp_path):
    saved = to_channels_last(_model())
    weights4d = [p for p in saved.parameters() if p.dim() == 4]
    assert weights4d and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights4d)
    seen = []
    saved.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    image = [torch.rand(3, 64, 96) * 255]
    with torch.no_grad():
        want = saved(image)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the input converted
    Checkpointer(saved, save_dir=str(tmp_path)).save("cl")

    loaded = _model()
    with torch.no_grad():  # different weights before loading
        for p in loaded.parameters():
            p.add_(1.0)
    Checkpointer(loaded, save_dir=str(tmp_path)).load(str(tmp_path / "cl.pth"))
    state, reference = loaded.state_dict(), saved.state_dict()
    assert list(state) == list(reference)
    for key in state:
        assert torch.equal(state[key], reference[key]), key
    with torch.no_grad():
        got = loaded(image)
    for g, w in zip(got, want):
        torch.testing.assert_close(g["boxes"], w["boxes"])
        torch.testing.assert_close(g["scores"], w["scores"])


def test_compile_keeps_state_dict_keys(tmp_path):
    model = _model()
    keys = list(model.state_dict())
    cfg = _cfg("SPEED.COMPILE", True, "SPEED.CHANNELS_LAST", True)
    benchmark = torch.backends.cudnn.benchmark
    try:
        apply_speed_switches(cfg, model)  # compiled lazily: no forward here
        assert torch.backends.cudnn.benchmark == benchmark  # SPEED.CUDNN_BENCHMARK off
        apply_speed_switches(_cfg("SPEED.CUDNN_BENCHMARK", True), nn.Linear(1, 1))
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = benchmark
    assert list(model.state_dict()) == keys
    path = Checkpointer(model, save_dir=str(tmp_path)).save("compiled")
    saved = torch.load(path, weights_only=True)["model"]
    assert list(saved) == keys and not any("_orig_mod" in k for k in saved)


@pytest.mark.parametrize("loss_type", ["FOCAL", "DR"])
def test_classification_loss_value_is_float32_for_bfloat16_logits(loss_type, op_form):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", loss_type, "MODEL.NUM_CLASSES", 4])
    torch.manual_seed(0)
    logits = torch.randn(2, 50, 3)
    labels = torch.randint(-1, 4, (2, 50))
    loss = build_classification_loss(cfg, loss_type)
    got = loss(logits.bfloat16(), labels, torch.tensor(5.0))
    want = loss(logits.bfloat16().float(), labels, torch.tensor(5.0))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_benchmark_peak_table():
    from drdet.utils.benchmark import peak_tflops

    assert peak_tflops("NVIDIA H200", amp=True) == 989.4
    assert peak_tflops("NVIDIA H200 NVL", amp=False) == 418.0  # the more specific entry first
    assert peak_tflops("NVIDIA H100 PCIe", amp=True) == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", amp=False) == 156.0
    assert peak_tflops("NVIDIA GeForce RTX 4090", amp=True) is None  # not in the table


@pytest.mark.slow
@pytest.mark.usefixtures("synthetic_datasets_root")
def test_train_net_with_switches_matches_without(tmp_path):
    """tools/train_net.py with SPEED.CHANNELS_LAST and SPEED.DEFER_CHECKS on trains the same
    weights as without (same seed and data), logs the deferred losses at the flushes, and its
    final checkpoint loads into a model built without the switches."""
    from tool_loader import load_tool  # tests/ is on sys.path under pytest

    train_net = load_tool("train_net")
    tiny = ["--config-file", CONFIG, "--skip-test"] + tiny_overrides(
        test_set=None,
        max_iter=4,
        test_size=False,
        test_ims_per_batch=None,
        overrides={**SMALL_HEAD, **STEADY, "SOLVER.LOG_PERIOD": 2},
    )
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    train_net.main(tiny + ["OUTPUT_DIR", str(plain)])
    train_net.main(
        tiny
        + ["OUTPUT_DIR", str(fast), "SPEED.CHANNELS_LAST", "True", "SPEED.DEFER_CHECKS", "True"]
    )
    want = torch.load(plain / "model_final.pth", weights_only=True)["model"]
    got = torch.load(fast / "model_final.pth", weights_only=True)["model"]
    assert list(got) == list(want)
    # channels_last convolutions round differently, and 4 steps from scratch (GroupNorm over
    # maps of small variance) amplify rounding: the same plain run differs by up to 5.8e-4 between
    # the AVX2 and AVX-512 kernels. A skipped or repeated step moves weights by ~lr * |grad| (1e-2).
    for key in want:
        torch.testing.assert_close(
            got[key], want[key], rtol=1e-2, atol=2e-3, msg=lambda m, key=key: f"{key}: {m}"
        )
    records = [json.loads(line) for line in open(fast / "metrics.jsonl")]
    assert [r["iteration"] for r in records] == [2, 4] and all("loss" in r for r in records)
    model = build_detector(
        _cfg("MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CONVS", 1)
    )
    Checkpointer(model, save_dir=str(fast)).load(str(fast / "model_final.pth"))

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from drdet.checkpoint import (
    LAST_CHECKPOINT,
    Checkpointer,
    get_rng_state,
    load_checkpoint_file,
    load_model_state,
    set_rng_state,
)
from drdet.solver import WarmupMultiStepLR


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )


def _train_state(steps=3):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = WarmupMultiStepLR(opt, milestones=[2], warmup_iters=1)
    for _ in range(steps):
        net(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
        sched.step()
    return net, opt, sched


def test_round_trip_restores_everything(tmp_path):
    net, opt, sched = _train_state()
    rng = get_rng_state()
    path = Checkpointer(net, opt, sched, str(tmp_path), save_to_disk=True).save(
        "model_0000003", iteration=3, rng=rng, sampler={"epoch": 1, "position": 6}
    )
    assert path == str(tmp_path / "model_0000003.pth")
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0000003.pth"

    expected_draw = (torch.rand(3), np.random.rand(), random.random())
    net2 = _net()
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    sched2 = WarmupMultiStepLR(opt2, milestones=[2], warmup_iters=1)
    extra = Checkpointer(net2, opt2, sched2, str(tmp_path), save_to_disk=True).resume()
    assert extra["iteration"] == 3 and extra["sampler"] == {"epoch": 1, "position": 6}
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k
    assert sched2.last_epoch == sched.last_epoch
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for p, p2 in zip(net.parameters(), net2.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[p2]["momentum_buffer"])
    set_rng_state(extra["rng"])
    draw = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(draw[0], expected_draw[0]) and draw[1:] == expected_draw[1:]


def test_resume_without_checkpoint_is_fresh_start(tmp_path):
    assert Checkpointer(_net(), save_dir=str(tmp_path), save_to_disk=True).resume() == {}


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    net, opt, sched = _train_state()
    ckpt = Checkpointer(net, opt, sched, str(tmp_path), save_to_disk=True)
    ckpt.save("model_0000001", iteration=1)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # only part of the data reached the file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0000002", iteration=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path)) == [LAST_CHECKPOINT, "model_0000001.pth"]  # no temp file
    assert ckpt.last_checkpoint() == str(tmp_path / "model_0000001.pth")
    assert (
        Checkpointer(_net(), save_dir=str(tmp_path), save_to_disk=True).resume()["iteration"] == 1
    )


def _write_marker(path):
    with open(path, "w") as f:
        f.write("pwned")
    return {}


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_write_marker, (self.path,))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(str(marker))}, path)
    with pytest.raises(RuntimeError, match="allow_pickle=True"):
        load_checkpoint_file(path)
    with pytest.raises(RuntimeError, match="weights_only"):
        Checkpointer(_net(), save_dir=str(tmp_path), save_to_disk=True).load(path)
    assert not marker.exists()
    # Explicit opt-in unpickles it (and so runs the payload: that is what the flag warns about).
    data = load_checkpoint_file(path, allow_pickle=True)
    assert marker.exists() and torch.equal(data["model"]["w"], torch.zeros(1))


def test_legacy_plain_pickle_needs_opt_in(tmp_path):
    import pickle

    path = str(tmp_path / "detectron.pkl")
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones((2, 3), dtype=np.float32)}}, f)
    with pytest.raises(RuntimeError, match="allow_pickle"):
        load_checkpoint_file(path)
    data = load_checkpoint_file(path, allow_pickle=True)
    assert torch.equal(data["model"]["conv1_w"], torch.ones(2, 3))


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    ckpt = Checkpointer(_net(), save_dir=str(tmp_path), save_to_disk=True)
    with pytest.raises(TypeError, match=r"\['state'\].*ndarray"):
        ckpt.save("model_final", state=np.zeros(3))
    assert os.listdir(tmp_path) == []


def test_shape_mismatch_names_key_and_shapes():
    net = nn.Linear(4, 2)
    bad = {"weight": torch.zeros(3, 4), "bias": torch.zeros(2)}
    with pytest.raises(RuntimeError, match=r"weight: checkpoint \(3, 4\) vs model \(2, 4\)"):
        load_model_state(net, bad)


def test_module_prefix_missing_and_unexpected_keys():
    src = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    state = {"module." + k: v for k, v in src.state_dict().items()}
    del state["module.1.bias"]
    state["module.extra"] = torch.zeros(1)
    dst = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    bias_before = dst[1].bias.detach().clone()
    report = load_model_state(dst, state)
    assert report["missing"] == ["1.bias"] and report["unexpected"] == ["extra"]
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, src[1].weight)
    assert torch.equal(dst[1].bias, bias_before)


def test_only_main_process_writes(tmp_path):
    assert Checkpointer(_net(), save_dir=str(tmp_path), save_to_disk=False).save("m") is None
    assert os.listdir(tmp_path) == []


def test_resume_or_load_prefers_last_checkpoint(tmp_path):
    src, opt, sched = _train_state()
    weights = str(tmp_path / "weights.pth")
    torch.save(src.state_dict(), weights)  # a bare state dict, as published weights often are
    out = tmp_path / "out"
    net = _net()
    assert Checkpointer(net, save_dir=str(out), save_to_disk=True).resume_or_load(weights) == {}
    assert torch.equal(net[0].weight, src[0].weight)
    Checkpointer(net, save_dir=str(out), save_to_disk=True).save("model_0000007", iteration=7)
    assert Checkpointer(_net(), save_dir=str(out), save_to_disk=True).resume_or_load(weights) == {
        "iteration": 7
    }

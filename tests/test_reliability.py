"""Interrupted and failing runs of tools/train_net.py, by real signals and real processes (CPU,
a 64-px COCO-format set of 8 images, a ResNet-18 of 32-channel width):

- SIGKILL at several moments (before the first checkpoint, while a checkpoint is being written,
  between checkpoints): last_checkpoint always names a checkpoint that loads with
  torch.load(weights_only=True), and --resume goes on from it to the end;
- two gloo processes running the real training loop, one failing at iteration 2 (raising, or
  hanging): the other exits with an error within SOLVER.DIST_TIMEOUT_MINUTES instead of waiting.
"""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_overrides, train_net_command  # tests/ is on sys.path
from PIL import Image
from tool_loader import (  # tests/tool_loader.py (tests/ is on sys.path under pytest)
    checkout_env,
    load_tool,
)

from drdet.utils.io import TMP_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

train_net = load_tool("train_net")

CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")


def shapes_dataset(root):
    """8 images of 64 x 64, one bright 24-px square each (one category). Returns the dataset
    name (coco:<json>:<folder>)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    rng = np.random.RandomState(0)
    images, anns = [], []
    for i in range(1, 9):
        pixels = np.full((64, 64, 3), 40, np.uint8)
        x, y = (int(v) for v in rng.randint(4, 36, 2))
        pixels[y : y + 24, x : x + 24] = 220
        Image.fromarray(pixels).save(img_dir / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 64})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [x, y, 24, 24]})
    (root / "ann.json").write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "square"}]}
        )
    )
    return f"coco:{root / 'ann.json'}:{img_dir}"


def tiny(dataset):
    return tiny_overrides(
        dataset,
        "",
        size=64,
        test_size=False,
        test_ims_per_batch=None,
        overrides={
            "MODEL.NUM_CLASSES": 2,
            "MODEL.RETINANET.NUM_CONVS": 1,
            "MODEL.RESNETS.STEM_OUT_CHANNELS": 32,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
            "MODEL.RESNETS.WIDTH_PER_GROUP": 32,
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 32,
            "INPUT.HORIZONTAL_FLIP_PROB_TRAIN": "0.0",
            "SOLVER.STEPS": "(1000,)",
            "SOLVER.LOG_PERIOD": 1,
        },
    )


def _env():
    return checkout_env(OMP_NUM_THREADS="1")


def _wait(condition, procs, timeout, what):
    """Polls `condition()` every half millisecond until true; fails when a process of `procs`
    ended or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"process ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


# ----------------------------------------------------------------------------- SIGKILL
def _checkpoint_iteration(out):
    """The iteration of the checkpoint last_checkpoint names, loaded with weights_only=True (the
    test fails if it does not load, or is not the checkpoint of the iteration in its name)."""
    name = (out / "last_checkpoint").read_text().strip()
    data = torch.load(out / name, map_location="cpu", weights_only=True)
    assert set(data) >= {"model", "optimizer", "scheduler", "iteration", "rng"}, set(data)
    assert name == f"model_{data['iteration']:07d}.pth", (name, data["iteration"])
    assert all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point())
    return data["iteration"]


def _named_iteration(out):
    """The iteration in the name last_checkpoint holds (-1 without one); reads no checkpoint."""
    try:
        name = (out / "last_checkpoint").read_text().strip()
    except FileNotFoundError:
        return -1
    return int(name[len("model_") : -len(".pth")])


def _temporaries(out):
    return [n for n in os.listdir(out) if n.startswith(TMP_PREFIX)]


def _start_training(out, dataset, log_name, resume=True):
    cmd = (
        train_net_command(CONFIG)
        + (["--resume"] if resume else [])
        + tiny(dataset)
        + ["SOLVER.MAX_ITER", "1000", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)]
    )
    log = open(out.parent / log_name, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint_and_resume_matches(tmp_path):
    dataset = shapes_dataset(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()

    # 1. During the first iteration, before any checkpoint: nothing to resume, --resume starts
    #    from scratch.
    proc = _start_training(out, dataset, "1.log", resume=False)
    _wait(
        lambda: (out / "log.txt").exists() and "Start training" in (out / "log.txt").read_text(),
        [proc],
        120,
        "training to start",
    )
    _kill(proc)
    assert not (out / "last_checkpoint").exists()

    # 2. While a checkpoint is being written: as soon as its temporary file appears (after the
    #    first checkpoint is complete). The temporary file is left behind, the one before loads.
    #    (Tried again, resuming, in the unlikely case that the write ended before the kill.)
    for attempt in range(3):
        proc = _start_training(out, dataset, f"2.{attempt}.log")
        _wait(
            lambda: (
                (out / "last_checkpoint").exists()
                and any(n.startswith(TMP_PREFIX + "model_") for n in os.listdir(out))
            ),
            [proc],
            120,
            "a checkpoint being written",
        )
        _kill(proc)
        at_kill = _checkpoint_iteration(out)
        left = [n for n in _temporaries(out) if n.startswith(TMP_PREFIX + "model_")]
        if left:
            break
    assert len(left) == 1, os.listdir(out)  # killed mid-write, not after the rename
    written = int(left[0][len(TMP_PREFIX + "model_") :].split(".")[0])
    assert at_kill == written - 1 and not (out / f"model_{written:07d}.pth").exists()
    assert "holds no last_checkpoint" in (tmp_path / "2.0.log").read_text()  # step 1 left none

    # 3. Between checkpoints: right after one is complete, in the next iteration.
    proc = _start_training(out, dataset, "3.log")
    _wait(lambda: _named_iteration(out) >= at_kill + 2, [proc], 120, "two more checkpoints")
    _kill(proc)
    log3 = (tmp_path / "3.log").read_text()
    assert f"Start training from iteration {at_kill} " in log3
    assert "temporary files of an interrupted run" in log3 and left[0] in log3
    at_kill = _checkpoint_iteration(out)

    # 4. --resume to the end, in this process.
    end = at_kill + 2
    train_net.main(
        ["--config-file", CONFIG, "--skip-test", "--resume"]
        + tiny(dataset)
        + ["SOLVER.MAX_ITER", str(end), "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)]
    )
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == end
    assert f"Start training from iteration {at_kill} " in (out / "log.txt").read_text()
    assert _temporaries(out) == []

    # 5. The same weights as a run never interrupted (same data order and RNG streams; the
    #    killed runs used other threads, hence a float tolerance rather than bit equality).
    ref = tmp_path / "uninterrupted"
    train_net.main(
        ["--config-file", CONFIG, "--skip-test"]
        + tiny(dataset)
        + [
            "SOLVER.MAX_ITER",
            str(end),
            "SOLVER.CHECKPOINT_PERIOD",
            str(end),
            "OUTPUT_DIR",
            str(ref),
        ]
    )
    resumed = torch.load(out / "model_final.pth", weights_only=True)["model"]
    uninterrupted = torch.load(ref / "model_final.pth", weights_only=True)["model"]
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-6, msg=key)
    earlier = torch.load(out / f"model_{at_kill:07d}.pth", weights_only=True)["model"]
    assert any(not torch.equal(earlier[k], v) for k, v in uninterrupted.items())  # it trained


# ----------------------------------------------------------------------------- a rank fails
FAILING_RANK = r"""
import os, runpy, sys, time
import drdet.engine.train_step as trainer

if os.environ["RANK"] == "1" and {mode!r} in ("raise", "hang"):
    move_batch, calls = trainer.move_batch, []

    def failing_move_batch(*args, **kwargs):  # called once per iteration, before the forward
        calls.append(1)
        if len(calls) == 2:
            if {mode!r} == "raise":
                raise RuntimeError("injected failure on rank 1 at iteration 2")
            time.sleep(600)  # hangs
        return move_batch(*args, **kwargs)

    trainer.move_batch = failing_move_batch
sys.argv[0] = os.path.join({root!r}, "tools", "train_net.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_ranks(tmp_path, dataset, mode, *extra):
    """Rank 0 and rank 1 of a gloo group (RANK, WORLD_SIZE... as torchrun sets them, but without
    torchrun's agent, which would kill the survivor itself), each running tools/train_net.py;
    `mode` "raise" or "hang" makes rank 1 fail at iteration 2. Logs in tmp_path/rank<r>.log."""
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK.format(root=ROOT, mode=mode))
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(
            _env(),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        args = (
            ["--config-file", CONFIG, "--skip-test"]
            + tiny(dataset)
            + [
                "SOLVER.IMS_PER_BATCH",
                "4",  # 2 per rank (GroupNorm needs 2 values at P7's 1 x 1)
                "SOLVER.MAX_ITER",
                "50",
                "SOLVER.CHECKPOINT_PERIOD",
                "1000",
                "SOLVER.DIST_TIMEOUT_MINUTES",
                "0.05",
                "OUTPUT_DIR",
                str(tmp_path / "out"),
            ]
            + list(extra)
        )
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)] + args,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_makes_the_other_exit_within_the_timeout(tmp_path, mode):
    """Rank 1 raises, or hangs, at iteration 2: rank 0 must exit with an error, naming rank and
    iteration in its log, within SOLVER.DIST_TIMEOUT_MINUTES (0.05 = 3 s) of the failure
    instead of waiting."""
    procs = _start_two_ranks(tmp_path, shapes_dataset(tmp_path / "data"), mode)
    rank0, rank1 = procs
    try:
        log0 = tmp_path / "rank0.log"
        # (only rank 0 watched: a raising rank 1 may be gone before rank 0 logs iteration 1)
        _wait(lambda: " iter: 1 " in log0.read_text(), [rank0], 120, "iteration 1 on rank 0")
        started = time.monotonic()
        if mode == "raise":
            assert rank1.wait(timeout=60) == 1
        rc = rank0.wait(timeout=60)
        waited = time.monotonic() - started
        text = log0.read_text()
        assert rc != 0, text[-3000:]
        assert waited < 3 + 30, waited  # the timeout, and a margin for a loaded machine
        assert "Training stopped by" in text and "at iteration 2 on rank 0 of 2" in text, text[
            -3000:
        ]
        if mode == "hang":
            assert rank1.poll() is None  # rank 0 did not wait for rank 1 to end
            assert "Timed out waiting 3000ms" in text  # gloo applied DIST_TIMEOUT_MINUTES 0.05
        else:
            assert "injected failure on rank 1" in (tmp_path / "rank1.log").read_text()
    finally:
        _stop(procs)


@pytest.mark.slow
def test_a_bad_image_on_one_rank_stops_both_at_the_same_iteration(tmp_path):
    """DATALOADER.MAX_BAD_IMAGES 0 and an unreadable image that only rank 1 draws: the count is
    summed over the ranks with the losses, so both ranks stop at once with
    TooManyBadImagesError (rank 1 naming the file), its message alone and exit 2, neither
    waiting for a timeout."""
    from drdet.data.samplers import TrainingSampler

    dataset = shapes_dataset(tmp_path / "data")
    # the global stream's 4th image goes to rank 1 in iteration 1 (rank r takes r, r + 2, ...)
    index = next(itertools.islice(TrainingSampler(8, seed=0), 3, None))
    bad = tmp_path / "data" / "images" / f"{index + 1}.png"
    bad.write_bytes(b"garbage")
    procs = _start_two_ranks(tmp_path, dataset, "none", "DATALOADER.MAX_BAD_IMAGES", "0")
    try:
        codes = [proc.wait(timeout=120) for proc in procs]
        logs = [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
        # a user's data problem: the message alone and exit 2 on every rank (no traceback)
        assert codes == [2, 2], logs[0][-2000:] + logs[1][-2000:]
        for rank, text in enumerate(logs):
            assert (
                "train_net.py: error: Training stopped at iteration 1 at an unreadable "
                f"image (DATALOADER.MAX_BAD_IMAGES = 0: none allowed) (rank {rank} of 2)" in text
            )
            assert "Traceback" not in text
            assert "Timed out" not in text and "closed by peer" not in text
        assert f"{str(bad)!r} (image id {index + 1}): cannot decode" in logs[1]
        assert "none in this process: see the logs of the other ranks" in logs[0]
    finally:
        _stop(procs)

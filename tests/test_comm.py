import json
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from drdet.evaluation import gather_predictions
from drdet.utils import comm
from drdet.utils.logger import setup_logger
from drdet.utils.metric_logger import JSONLinesWriter, MetricLogger, SmoothedValue


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_rank_env(rank, world_size, port):
    """The environment torchrun gives rank ``rank`` of a one-machine job."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _worker(rank, world_size, port, results):
    _set_rank_env(rank, world_size, port)
    assert comm.init_distributed(backend="gloo", timeout_minutes=1)
    try:
        gathered = comm.all_gather({"rank": rank, "ids": list(range(rank + 1))})
        to_root = comm.gather(rank * 10)
        reduced = comm.reduce_dict(
            {"a": torch.tensor(float(rank + 1)), "b": torch.tensor(2.0 * rank)}
        )
        summed = comm.reduce_dict({"a": torch.tensor(float(rank + 1))}, average=False)
        # rank r evaluated images r and r + 2 (a strided test sampler)
        preds = {i: {"scores": torch.tensor([float(i)])} for i in (rank, rank + 2)}
        merged = gather_predictions(preds, image_ids=[0, 1, 2, 3])
        comm.synchronize()
        results[rank] = {
            "world": comm.get_world_size(),
            "rank": comm.get_rank(),
            "local_rank": comm.get_local_rank(),
            "main": comm.is_main_process(),
            "gathered": gathered,
            "to_root": to_root,
            "reduced": {k: v.item() for k, v in reduced.items()},
            "summed": summed["a"].item(),
            "merged": None
            if merged is None
            else {i: p["scores"].item() for i, p in merged.items()},
        }
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_collectives():
    world_size = 2
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(world_size, _free_port(), results), nprocs=world_size, join=True)
    for rank in range(world_size):
        r = results[rank]
        assert (r["world"], r["rank"], r["local_rank"], r["main"]) == (2, rank, rank, rank == 0)
        assert r["gathered"] == [{"rank": 0, "ids": [0]}, {"rank": 1, "ids": [0, 1]}]
        assert r["reduced"] == {"a": pytest.approx(1.5), "b": pytest.approx(1.0)}  # means
        assert r["summed"] == pytest.approx(3.0)
    assert results[0]["to_root"] == [0, 10] and results[1]["to_root"] == []
    assert results[0]["merged"] == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0} and results[1]["merged"] is None


def test_single_process_fallbacks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert comm.init_distributed() is False
    assert comm.get_world_size() == 1 and comm.get_rank() == 0 and comm.is_main_process()
    comm.synchronize()
    assert comm.all_gather(5) == [5]
    values = {"loss": torch.tensor(2.0)}
    assert comm.reduce_dict(values) == values


def test_init_distributed_missing_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        comm.init_distributed()


def test_smoothed_value_and_metric_line():
    v = SmoothedValue(window_size=3)
    for x in [10.0, 1.0, 2.0, 3.0, 100.0]:
        v.update(x)
    assert v.median == 3.0 and v.avg == pytest.approx(35.0) and v.global_avg == pytest.approx(23.2)
    m = MetricLogger(window_size=2)
    m.update(loss=torch.tensor(1.0), time=0.5, data=0.1, lr=0.01)
    m.update(loss=torch.tensor(3.0), time=1.5, data=0.3, lr=0.02)
    line = m.format(iteration=10, max_iter=110, max_mem_mb=123.0)
    # eta = global avg time (1.0 s) * 100 remaining iterations
    assert line == (
        "eta: 0:01:40  iter: 10  loss: 2.0000 (2.0000)  lr: 0.020000  "
        "time: 1.5000 (1.0000)  data: 0.3000 (0.2000)  max mem: 123M"
    )
    with pytest.raises(TypeError, match="loss"):
        m.update(loss="x")


def test_jsonl_writer_and_logger(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    w = JSONLinesWriter(str(path))
    w.write({"iteration": 1, "loss": 0.5})
    assert json.loads(path.read_text().splitlines()[0]) == {"iteration": 1, "loss": 0.5}  # flushed
    w.write({"iteration": 2, "loss": float("nan")})
    w.close()
    assert [json.loads(x) for x in path.read_text().splitlines()][1]["loss"] is None

    log = setup_logger("drdet.test_main", str(tmp_path), distributed_rank=0)
    log.info("hello rank0")
    quiet = setup_logger("drdet.test_other", str(tmp_path / "r1"), distributed_rank=1)
    quiet.info("hello rank1")
    for h in log.handlers:
        h.flush()
    assert "hello rank0" in capsys.readouterr().out
    assert "hello rank0" in (tmp_path / "log.txt").read_text()
    assert not (tmp_path / "r1").exists()
    logging.getLogger("drdet.test_main").handlers.clear()


def _worker_one_rank_fails(rank, world_size, port, results):
    import time

    _set_rank_env(rank, world_size, port)
    comm.init_distributed(backend="gloo", timeout_minutes=0.02)  # 1.2 s
    if rank == 1:
        time.sleep(3)  # "hangs": never joins the collective below
        return
    start = time.monotonic()
    try:
        comm.all_gather(rank)
        results["error"] = None
    except Exception as err:  # noqa: BLE001  (gloo raises RuntimeError/DistBackendError)
        results["error"] = type(err).__name__
    results["seconds"] = time.monotonic() - start


def test_stuck_rank_makes_others_fail_within_timeout():
    results = mp.Manager().dict()
    mp.spawn(_worker_one_rank_fails, args=(2, _free_port(), results), nprocs=2, join=True)
    assert results["error"] is not None
    assert results["seconds"] < 3.5, results["seconds"]


def test_tensorboard_writer_optional(tmp_path):
    import importlib.util

    from drdet.utils.metric_logger import TensorboardWriter

    w = TensorboardWriter(str(tmp_path / "tb"))
    assert w.enabled == (importlib.util.find_spec("tensorboard") is not None)
    w.write({"loss": 1.0, "name": "x"}, step=1)  # no-op without tensorboard
    w.close()

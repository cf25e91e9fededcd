"""drdet's DistributedDataParallel keyword (drdet.engine.training.no_forward_buffer_sync) keeps
buffers from being broadcast before every forward without torch's deprecation warning, which
the old ``broadcast_buffers=False`` printed on every rank (a one-process gloo group here)."""

import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn

from drdet.engine.training import no_forward_buffer_sync


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def _future_warnings(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 2), **kwargs)
    return ddp, [w for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.usefixtures("one_process_group")
def test_no_deprecation_warning_and_no_buffer_sync_in_forward():
    ddp, caught = _future_warnings(**no_forward_buffer_sync())
    assert caught == []
    # the module's forwards do not broadcast its buffers (DDP's own switch, either keyword)
    sync = getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None))
    assert sync is False
    if "forward_sync_buffers" in no_forward_buffer_sync():  # torch >= 2.13: the old one warned
        assert _future_warnings(broadcast_buffers=False)[1]
    ddp(torch.ones(1, 2)).sum().backward()

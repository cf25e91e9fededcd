"""The library pieces tools/train_net.py uses around the loop: the stop request by signal, the
removal of an interrupted run's temporary files, and the NUM_CLASSES check."""

import logging
import os
import signal
from types import SimpleNamespace

import pytest

from drdet.config import get_cfg
from drdet.engine.defaults import check_num_classes
from drdet.utils.io import TMP_PREFIX, atomic_write_text, remove_stale_temporary_files
from drdet.utils.signals import StopRequest


def test_stop_request_counts_signals_and_restores_the_handlers():
    previous = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    with StopRequest() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before kill returns
        assert stop() and stop.requested
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS} == previous


def test_remove_stale_temporary_files_keeps_everything_else(tmp_path, caplog):
    atomic_write_text(str(tmp_path / "model_final.pth"), "kept")
    stale = [TMP_PREFIX + "model_0000010.pth.abc123", TMP_PREFIX + "metrics.jsonl.x"]
    for name in stale:
        (tmp_path / name).write_text("partial")
    (tmp_path / (TMP_PREFIX + "folder")).mkdir()  # not a file: left alone
    (tmp_path / "notes.tmp").write_text("not ours")
    with caplog.at_level(logging.WARNING):
        removed = remove_stale_temporary_files(str(tmp_path), logging.getLogger("drdet"))
    assert removed == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [TMP_PREFIX + "folder", "model_final.pth", "notes.tmp"]
    )
    assert "Removed 2 temporary files" in caplog.text
    assert remove_stale_temporary_files(str(tmp_path), logging.getLogger("drdet")) == []


def test_check_num_classes_counts_the_background():
    cfg = get_cfg()
    parts = SimpleNamespace(
        datasets=[
            SimpleNamespace(name="a", num_classes=20),
            SimpleNamespace(name="b", num_classes=3),
        ]
    )
    cfg.MODEL.NUM_CLASSES = 21  # 20 categories + background
    check_num_classes(cfg, parts)
    cfg.MODEL.NUM_CLASSES = 20
    with pytest.raises(ValueError, match=r"NUM_CLASSES is 20.*'a': 20.*set it to 21"):
        check_num_classes(cfg, parts)

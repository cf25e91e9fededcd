"""Host reads of device tensors in the training step (drdet/engine/train_step.py), and the
guarantees SPEED.DEFER_CHECKS keeps (the NaN guard names the iteration, the bad-target check the
image).

On the CPU every tensor is a host tensor, so the CPU test counts the Python-level reads
(``.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``, ``.cpu()``, ``nonzero()``) by
where in drdet they happen; a new read in the step shows up as a new site. The CUDA test counts
the real synchronisations with ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import collections
import os
import traceback
import warnings

import pytest
import torch
from helpers.tiny import ToyDetector  # tests/ is on sys.path under pytest

from drdet.config import get_cfg
from drdet.engine.train_step import NonFiniteLossError, TrainStep
from drdet.modeling import build_detector
from drdet.solver import make_lr_scheduler, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")
READS = [
    "item",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "tolist",
    "nonzero",
    "cpu",
    "numpy",
]

# The reads left in a RetinaNet step with SPEED.DEFER_CHECKS, between two flushes:
# the host-side check of the loader's (CPU) targets, no device sync on a GPU ...
HOST_TARGET_CHECK = ("targets.py", "_raise_on_bad_target", "__bool__")
# ... and the positive anchors' nonzero(), whose size shapes the regression loss.
POSITIVES = ("loss.py", "assign", "nonzero")


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        [
            "SOLVER.WARMUP_ITERS",
            0,
            "SOLVER.LOG_PERIOD",
            4,
            "SOLVER.CHECKPOINT_PERIOD",
            0,
            "SOLVER.MAX_ITER",
            100,
            *opts,
        ]
    )
    return cfg


def _retinanet_step(device, *opts):
    cfg = _cfg(*opts)
    torch.manual_seed(0)
    model = build_detector(cfg).to(device).train()
    opt = make_optimizer(cfg, model)
    return TrainStep(cfg, model, opt, make_lr_scheduler(cfg, opt), torch.device(device))


def _batch(bad_box: bool = False):
    images = [torch.rand(3, 64, 96) * 255 for _ in range(2)]
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]])
    targets = [
        {"boxes": boxes.clone(), "labels": torch.tensor([1, 3]), "image_id": 10 + i}
        for i in range(2)
    ]
    if bad_box:
        targets[1]["boxes"][1, 2] = 5.0  # x2 < x1
    return images, targets


class _ReadCounter:
    """Counts calls of the tensor reads READS by (file, function, read) of the innermost drdet
    frame that made them."""

    def __init__(self, monkeypatch):
        self.sites: collections.Counter = collections.Counter()
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            for frame in reversed(traceback.extract_stack()[:-1]):
                if f"{os.sep}drdet{os.sep}" in frame.filename:
                    self.sites[(os.path.basename(frame.filename), frame.name, name)] += 1
                    break
            return original(tensor, *args, **kwargs)

        return counted


@pytest.mark.slow
def test_cpu_step_reads_back_only_the_known_values(monkeypatch):
    """Default: one read of all reduced values per iteration (plus the gradient norm's finite
    check with clipping). SPEED.DEFER_CHECKS: none between flushes, one at a flush."""
    immediate = _retinanet_step("cpu")
    deferred = _retinanet_step("cpu", "SPEED.DEFER_CHECKS", True)
    immediate(1, *_batch())  # warm-up: lazy initialisations are not per-iteration reads
    deferred(1, *_batch())
    counter = _ReadCounter(monkeypatch)

    immediate(2, *_batch())
    assert dict(counter.sites) == {
        HOST_TARGET_CHECK: 1,
        POSITIVES: 1,
        ("train_step.py", "__call__", "cpu"): 1,
        ("train_step.py", "__call__", "tolist"): 1,
        ("train_step.py", "__call__", "__bool__"): 1,  # isfinite(grad_norm): CLIP_GRADIENTS on
    }
    for iteration in (2, 3):  # LOG_PERIOD 4: no flush
        counter.sites.clear()
        values, _ = deferred(iteration, *_batch())
        assert values == {}
        assert dict(counter.sites) == {HOST_TARGET_CHECK: 1, POSITIVES: 1}
    counter.sites.clear()
    values, _ = deferred(4, *_batch())
    assert dict(counter.sites) == {
        HOST_TARGET_CHECK: 1,
        POSITIVES: 1,
        ("train_step.py", "read", "cpu"): 1,
        ("train_step.py", "read", "tolist"): 1,
    }
    assert set(values) == {"loss_cls", "loss_reg", "loss", "grad_norm"}


@pytest.mark.slow
def test_bad_target_is_named_before_any_update_with_deferred_checks():
    step = _retinanet_step("cpu", "SPEED.DEFER_CHECKS", True)
    before = [p.detach().clone() for p in step.model.parameters()]
    with pytest.raises(
        ValueError,
        match=r"image 1 of the batch \(image_id 11\): box 1 .* "
        "degenerate",
    ):
        step(1, *_batch(bad_box=True))
    assert all(torch.equal(a, p) for a, p in zip(before, step.model.parameters()))


@pytest.mark.parametrize("meta", ["RetinaNet", "FCOS", "ATSS"])
def test_targets_are_checked_on_the_host_for_every_dense_detector(meta, monkeypatch):
    import inspect

    from drdet.modeling.dense import targets

    step = _retinanet_step("cpu", "MODEL.META_ARCHITECTURE", meta, "SPEED.DEFER_CHECKS", True)
    original, callers = targets._raise_on_bad_target, []

    def recorded(*args):
        callers.append(inspect.stack()[2].function)  # who called pad_targets
        return original(*args)

    monkeypatch.setattr(targets, "_raise_on_bad_target", recorded)
    step(1, *_batch())
    assert callers == ["check_targets"]  # the host check only; the loss trusts it
    with pytest.raises(ValueError, match=r"image 1 of the batch \(image_id 11\): box 1"):
        step(2, *_batch(bad_box=True))
    assert not _toy_step(defer=True).dense  # a detector that is not dense checks its own


def test_a_deferred_atss_step_reads_only_the_host_check_and_the_positives(monkeypatch):
    """ATSS's centre-ness-weighted box loss is normalised on the device (no read of its sum)."""
    deferred = _retinanet_step("cpu", "MODEL.META_ARCHITECTURE", "ATSS", "SPEED.DEFER_CHECKS", True)
    deferred(1, *_batch())  # warm-up
    counter = _ReadCounter(monkeypatch)
    assert deferred(2, *_batch()) == ({}, 0)
    assert dict(counter.sites) == {
        HOST_TARGET_CHECK: 1,
        ("targets.py", "matched_targets", "nonzero"): 1,  # the positives, as RetinaNet's
    }


def _toy_step(defer: bool, nan_at: int = -1, clip: bool = False) -> TrainStep:
    cfg = _cfg("SPEED.DEFER_CHECKS", defer, "SOLVER.CLIP_GRADIENTS.ENABLED", clip)
    model = ToyDetector(nan_at, drift=0.1)
    opt = make_optimizer(cfg, model)
    return TrainStep(cfg, model, opt, make_lr_scheduler(cfg, opt), torch.device("cpu"))


def _toy_batch():
    return [torch.zeros(3, 8, 8)] * 2, [{"image_id": 7}, {"image_id": 9}]


def test_deferred_nan_guard_names_the_first_bad_iteration():
    step = _toy_step(True, nan_at=3)
    for iteration in (1, 2, 3):  # no read yet: the NaN of iteration 3 is still on the device
        assert step(iteration, *_toy_batch()) == ({}, 0)
    with pytest.raises(NonFiniteLossError) as err:
        step(4, *_toy_batch())  # LOG_PERIOD 4: the flush
    message = str(err.value)
    assert "iteration 3" in message and "loss_reg" in message and "[7, 9]" in message


def test_deferred_values_are_the_means_over_the_window():
    immediate, deferred = _toy_step(False, clip=True), _toy_step(True, clip=True)
    window = [immediate(i, *_toy_batch())[0] for i in range(1, 5)]
    got = [deferred(i, *_toy_batch())[0] for i in range(1, 5)]
    assert got[:3] == [{}, {}, {}]
    for key in ("loss_cls", "loss_reg", "loss"):
        assert got[3][key] == pytest.approx(sum(v[key] for v in window) / 4, rel=1e-6)
    assert got[3]["grad_norm"] == pytest.approx(float(window[3]["grad_norm"]), rel=1e-6)
    assert float(deferred.model.w.detach()) == pytest.approx(float(immediate.model.w.detach()))


def test_deferred_nan_gradient_is_caught_at_the_flush():
    class NanGrad(ToyDetector):
        def forward(self, images, targets):
            out = super().forward(images, targets)
            if self.calls == 2:  # value 0, gradient inf * 0 = NaN
                out["loss_cls"] = out["loss_cls"] + torch.sqrt(self.w - self.w.detach()) * 0
            return out

    step = _toy_step(True, clip=True)
    step.model = NanGrad(drift=0.1)
    step.optimizer = torch.optim.SGD(step.model.parameters(), lr=0.01)
    step.scheduler = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda _: 1.0)
    for iteration in (1, 2, 3):
        step(iteration, *_toy_batch())
    with pytest.raises(NonFiniteLossError, match="gradient norm .* iteration 2"):
        step(4, *_toy_batch())


@pytest.mark.cuda
def test_cuda_step_syncs_only_where_known():
    """After warm-up, a RetinaNet step with SPEED.DEFER_CHECKS between two flushes synchronises
    at most once: the positive anchors' nonzero() (drdet/modeling/retinanet/loss.py). A new
    synchronisation anywhere in the step fails this test. (Written without a GPU: unverified.)"""
    step = _retinanet_step("cuda", "SPEED.DEFER_CHECKS", True)
    step(1, *_batch())
    step(2, *_batch())
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            step(3, *_batch())  # LOG_PERIOD 4: not a flush
            torch.cuda.set_sync_debug_mode("default")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs

"""The training loop's guards and hooks, and the multi-scale / flip test, on small stand-ins."""

import pytest
import torch
from helpers.tiny import ToyDetector  # tests/ is on sys.path under pytest
from torch import nn

from drdet.checkpoint import Checkpointer
from drdet.config import get_cfg
from drdet.engine.hooks import HookBase
from drdet.engine.test_time_augmentation import BBoxAug, detector_nms_thresh, merge_detections
from drdet.engine.trainer import NonFiniteLossError, do_train
from drdet.solver import make_lr_scheduler, make_optimizer


def _batches():
    while True:
        yield [torch.zeros(3, 8, 8)] * 2, [{"image_id": 7}, {"image_id": 9}], [0, 1]


def _setup(tmp_path, nan_at):
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            5,
            "SOLVER.WARMUP_ITERS",
            0,
            "SOLVER.LOG_PERIOD",
            1,
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    model = ToyDetector(nan_at)
    opt = make_optimizer(cfg, model)
    sched = make_lr_scheduler(cfg, opt)
    return cfg, model, opt, sched, Checkpointer(model, opt, sched, save_dir=str(tmp_path))


def test_nan_loss_stops_naming_iteration_term_and_images(tmp_path):
    cfg, model, opt, sched, ckpt = _setup(tmp_path, nan_at=3)
    with pytest.raises(NonFiniteLossError) as err:
        do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"))
    message = str(err.value)
    assert "iteration 3" in message and "loss_reg" in message and "[7, 9]" in message
    assert "loss_cls" not in message.split("(")[0]  # only the bad term is named as the cause
    assert torch.isfinite(model.w).all()  # the NaN step was not applied
    assert not (tmp_path / "model_final.pth").exists()


def test_finite_run_writes_final_checkpoint_and_metrics(tmp_path):
    cfg, model, opt, sched, ckpt = _setup(tmp_path, nan_at=-1)
    assert do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu")) == 5
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 5
    # SGD with momentum 0.9, lr 0.01 (bias factor does not apply to "w"), weight decay 1e-4:
    w, v = 1.0, 0.0
    for _ in range(5):
        g = 2.5 + 1e-4 * w
        v = 0.9 * v + g
        w -= 0.01 * v
    assert saved["model"]["w"].item() == pytest.approx(w, rel=1e-6)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5


def test_merge_detections_keeps_best_per_class():
    a = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 2]),
    }
    b = {
        "boxes": torch.tensor([[1.0, 0, 10, 10], [0, 0, 10, 10]]),
        "scores": torch.tensor([0.8, 0.7]),
        "labels": torch.tensor([1, 2]),
    }
    merged = merge_detections([a, b], nms_thresh=0.5, max_detections=10)
    # class 1: 0.8 box overlaps the 0.9 box (IoU 0.9) -> suppressed; class 2 boxes are disjoint
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert merged["labels"].tolist() == [1, 2, 2]
    assert len(merge_detections([a, b], 0.5, max_detections=2)["scores"]) == 2


class _FixedDetector(nn.Module):
    """Detects one box at the left quarter of whatever image it gets, in original pixels."""

    def forward(self, images, original_sizes):
        out = []
        for img, (h, w) in zip(images, original_sizes):
            sh, sw = h / img.shape[1], w / img.shape[2]
            box = torch.tensor([[0.0, 0.0, img.shape[2] / 4, img.shape[1] / 2]])
            out.append(
                {
                    "boxes": box * torch.tensor([sw, sh, sw, sh]),
                    "scores": torch.tensor([0.5]),
                    "labels": torch.tensor([1]),
                }
            )
        return out


def test_bbox_aug_maps_flipped_detections_back():
    aug = BBoxAug(scales=(40, 80), max_size=1000, h_flip=True, nms_thresh=0.99, max_detections=10)
    image = torch.zeros(3, 60, 120)  # what the test loader produced for a 30 x 60 original
    out = aug(_FixedDetector(), [image], [{"orig_size": (30, 60)}])[0]
    boxes = {tuple(round(v, 3) for v in b) for b in out["boxes"].tolist()}
    # unflipped: left quarter [0, 15]; flipped back: right quarter [45, 60]; same at both scales
    assert boxes == {(0.0, 0.0, 15.0, 15.0), (45.0, 0.0, 60.0, 15.0)}


@pytest.mark.parametrize("meta", ["RetinaNet", "FCOS", "ATSS"])
def test_bbox_aug_merges_at_the_detectors_own_nms_threshold(meta):
    from drdet.modeling import build_detector

    cfg = get_cfg()
    cfg.merge_from_list(
        ["MODEL.META_ARCHITECTURE", meta, "MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET"]
        + ["MODEL.RETINANET.NMS_TH", 0.31, "MODEL.FCOS.NMS_TH", 0.47, "MODEL.ATSS.NMS_TH", 0.53]
    )
    model = build_detector(cfg)
    expected = {"RetinaNet": 0.31, "FCOS": 0.47, "ATSS": 0.53}[meta]
    assert detector_nms_thresh(model) == pytest.approx(expected)
    wrapped = nn.DataParallel(model)
    assert detector_nms_thresh(wrapped) == pytest.approx(expected)
    with pytest.raises(ValueError, match="_FixedDetector has no postprocessor.nms_thresh"):
        BBoxAug((40,), 1000, False, None, 10)(_FixedDetector(), [torch.zeros(3, 8, 8)], [{}])


def test_periodic_evaluation_is_recorded(tmp_path):
    cfg, model, opt, sched, ckpt = _setup(tmp_path, nan_at=-1)
    cfg.merge_from_list(["TEST.EVAL_PERIOD", 2])
    calls = []

    def evaluate(iteration):
        calls.append(iteration)
        return {"toy_val": {"AP": 0.25, "AP50": 0.5}}

    do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"), evaluate=evaluate)
    assert calls == [2, 4]  # not at the final iteration 5: the caller evaluates the final model
    import json

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/toy_val/AP" in r]
    assert [(r["iteration"], r["eval/toy_val/AP50"]) for r in evals] == [(2, 0.5), (4, 0.5)]


class _NanGradDetector(ToyDetector):
    """Finite losses whose gradient is NaN at iteration `nan_at` (sqrt at 0)."""

    def forward(self, images, targets):
        self.calls += 1
        cls = self.w * 1.0
        if self.calls == self.nan_at:  # d/dw sqrt(w - w) * 0 = inf * 0 = NaN, value 0
            cls = cls + torch.sqrt(self.w - self.w.detach()) * 0
        return {"loss_cls": cls, "loss_reg": self.w * 0.5}


def test_nan_gradient_stops_with_clipping_enabled(tmp_path):
    cfg, _, _, _, _ = _setup(tmp_path, nan_at=-1)
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", True])
    model = _NanGradDetector(nan_at=2)
    opt = make_optimizer(cfg, model)
    sched = make_lr_scheduler(cfg, opt)
    ckpt = Checkpointer(model, opt, sched, save_dir=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="gradient norm .* iteration 2"):
        do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"))
    assert torch.isfinite(model.w).all()


class _RecordingHook(HookBase):
    """Records what the trainer shows it: events, iterations, loss values, which periodic
    checkpoints exist when after_step runs; optionally requests a stop at `stop_at`."""

    def __init__(self, output_dir, stop_at=None):
        self.output_dir = output_dir
        self.stop_at = stop_at
        self.events, self.iterations, self.values, self.checkpoints = [], [], [], []

    def before_train(self):
        self.events.append(("before_train", self.trainer.iteration))

    def after_step(self):
        t = self.trainer
        self.iterations.append(t.iteration)
        self.values.append(dict(t.values))
        self.checkpoints.append(sorted(p.name for p in self.output_dir.glob("model_*.pth")))
        if t.iteration == self.stop_at:
            t.request_stop()

    def after_train(self):
        self.events.append(("after_train", self.trainer.iteration))


def test_user_hook_runs_after_the_builtin_actions_of_every_iteration(tmp_path):
    cfg, model, opt, sched, ckpt = _setup(tmp_path, nan_at=-1)
    cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD", 2])
    hook = _RecordingHook(tmp_path)
    last = do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"), hooks=[hook])
    assert last == 5 and hook.iterations == [1, 2, 3, 4, 5]
    assert hook.events == [("before_train", 0), ("after_train", 5)]
    # the periodic checkpoint of an iteration is written before the user hook sees it
    assert hook.checkpoints[1] == ["model_0000002.pth"]
    assert hook.checkpoints[4] == ["model_0000002.pth", "model_0000004.pth"]
    # iteration 1 with w = 1: loss_cls = 2 w, loss_reg = 0.5 w (the toy's formulas)
    assert hook.values[0]["loss_cls"] == 2.0 and hook.values[0]["loss_reg"] == 0.5
    for values in hook.values:
        assert values["loss"] == pytest.approx(values["loss_cls"] + values["loss_reg"])
    assert (tmp_path / "model_final.pth").exists()


def test_a_hook_can_end_the_run_and_after_train_runs_on_failure(tmp_path):
    cfg, model, opt, sched, ckpt = _setup(tmp_path, nan_at=-1)
    hook = _RecordingHook(tmp_path, stop_at=3)
    assert (
        do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"), hooks=[hook]) == 3
    )
    assert hook.iterations == [1, 2, 3] and hook.events[-1] == ("after_train", 3)
    assert not (tmp_path / "model_final.pth").exists()

    cfg, model, opt, sched, ckpt = _setup(tmp_path / "nan", nan_at=2)
    hook = _RecordingHook(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError):
        do_train(cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"), hooks=[hook])
    assert hook.iterations == [1] and hook.events[-1] == ("after_train", 2)


def test_should_stop_saves_the_current_iteration_and_returns_it(tmp_path):
    cfg, model, opt, sched, ckpt = _setup(tmp_path, nan_at=-1)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) >= 2

    assert (
        do_train(
            cfg, model, _batches(), opt, sched, ckpt, torch.device("cpu"), should_stop=should_stop
        )
        == 2
    )
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert saved["iteration"] == 2 and "rng" in saved
    torch.testing.assert_close(saved["model"]["w"], model.w.detach())
    assert not (tmp_path / "model_final.pth").exists()

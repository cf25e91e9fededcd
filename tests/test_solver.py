import math

import pytest
import torch
from torch import nn

from drdet.config import get_cfg
from drdet.solver import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    make_lr_scheduler,
    make_optimizer,
    param_groups,
)


def _solver_cfg(**overrides):
    cfg = get_cfg()
    s = cfg.SOLVER
    s.MAX_ITER = 100
    s.BASE_LR = 0.01
    s.BIAS_LR_FACTOR = 2.0
    s.MOMENTUM = 0.9
    s.WEIGHT_DECAY = 1e-4
    s.WEIGHT_DECAY_BIAS = 0.0
    s.GAMMA = 0.1
    s.STEPS = (60, 80)
    s.WARMUP_FACTOR = 1.0 / 3
    s.WARMUP_ITERS = 10
    s.WARMUP_METHOD = "linear"
    for k, v in overrides.items():
        setattr(s, k, v)
    return cfg


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = nn.Conv2d(4, 4, 1)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.fc = nn.Linear(4, 2, bias=False)


def _lrs(scheduler, optimizer, iters):
    out = []
    for _ in range(iters):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _one_group_optimizer(lr=0.01):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def test_param_groups_split_bias_norm_frozen():
    net = _Net()
    groups = {
        g["name"]: g
        for g in param_groups(
            net, 0.01, 1e-4, bias_lr_factor=2.0, weight_decay_bias=0.0, weight_decay_norm=0.5
        )
    }
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(groups["weight"]) == {id(net.conv.weight), id(net.fc.weight)}
    assert ids(groups["norm"]) == {id(net.gn.weight)}
    assert ids(groups["bias"]) == {id(net.conv.bias), id(net.gn.bias)}
    assert groups["weight"]["lr"] == 0.01 and groups["weight"]["weight_decay"] == 1e-4
    assert groups["norm"]["lr"] == 0.01 and groups["norm"]["weight_decay"] == 0.5
    assert groups["bias"]["lr"] == pytest.approx(0.02) and groups["bias"]["weight_decay"] == 0.0
    frozen = {id(p) for p in net.frozen.parameters()}
    assert not frozen & set().union(*(ids(g) for g in groups.values()))


def test_make_optimizer_norm_decay_defaults_to_weight_decay():
    net = _Net()
    opt = make_optimizer(_solver_cfg(), net)
    assert isinstance(opt, torch.optim.SGD)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["norm"]["weight_decay"] == 1e-4
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    n_trainable = sum(1 for p in net.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable


def test_multistep_linear_warmup_hand_computed():
    opt = _one_group_optimizer(0.01)
    sched = WarmupMultiStepLR(
        opt,
        milestones=[6, 8],
        gamma=0.1,
        warmup_factor=1 / 3,
        warmup_iters=4,
        warmup_method="linear",
    )
    got = _lrs(sched, opt, 10)
    # t < 4: 0.01 * (1/3 * (1 - t/4) + t/4)
    want = [0.01 * (1 / 3 * (1 - t / 4) + t / 4) for t in range(4)]
    want += [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[1] == pytest.approx(0.01 * 0.5)  # 1/3 * 3/4 + 1/4 = 1/2


def test_constant_warmup_and_bias_group_scaled():
    net = _Net()
    opt = make_optimizer(_solver_cfg(WARMUP_METHOD="constant", WARMUP_ITERS=3, STEPS=(5,)), net)
    sched = make_lr_scheduler(
        _solver_cfg(WARMUP_METHOD="constant", WARMUP_ITERS=3, STEPS=(5,)), opt
    )
    bias = next(g for g in opt.param_groups if g["name"] == "bias")
    seen = []
    for _ in range(7):
        seen.append(bias["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.02 / 3] * 3 + [0.02] * 2 + [0.002] * 2)


def test_cosine_hand_computed():
    opt = _one_group_optimizer(0.1)
    sched = WarmupCosineLR(opt, max_iters=20, warmup_factor=0.5, warmup_iters=2)
    got = _lrs(sched, opt, 21)
    assert got[0] == pytest.approx(0.05)
    assert got[1] == pytest.approx(0.1 * (0.5 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi / 20)))
    assert got[10] == pytest.approx(0.05)  # half way: cos(pi/2) = 0
    assert got[15] == pytest.approx(0.1 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert got[20] == 0.0


def test_make_lr_scheduler_cosine_and_bad_name():
    cfg = _solver_cfg()
    cfg.SOLVER.LR_SCHEDULER = "cosine"
    opt = _one_group_optimizer()
    assert isinstance(make_lr_scheduler(cfg, opt), WarmupCosineLR)
    cfg.SOLVER.LR_SCHEDULER = "poly"
    with pytest.raises(ValueError, match="LR_SCHEDULER"):
        make_lr_scheduler(cfg, _one_group_optimizer())


def test_scheduler_state_dict_resume():
    opt = _one_group_optimizer()
    sched = WarmupMultiStepLR(opt, milestones=[5], warmup_iters=3)
    _lrs(sched, opt, 7)
    state = sched.state_dict()
    opt2 = _one_group_optimizer()
    sched2 = WarmupMultiStepLR(opt2, milestones=[5], warmup_iters=3)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7
    assert sched2.get_last_lr() == pytest.approx([0.001])
    # The optimizer lr is restored with the optimizer's own state dict; afterwards they agree.
    opt2.load_state_dict(opt.state_dict())
    assert _lrs(sched2, opt2, 3) == pytest.approx(_lrs(sched, opt, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(milestones=[5, 3]), "milestones"),
        (dict(milestones=[5], warmup_method="exp"), "warmup_method"),
        (dict(milestones=[5], warmup_factor=0.0), "warmup_factor"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupMultiStepLR(_one_group_optimizer(), **kwargs)


def test_gradient_clipper():
    from drdet.solver import make_gradient_clipper

    cfg = _solver_cfg()
    assert make_gradient_clipper(cfg) is None
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.MAX_NORM = 1.0
    clip = make_gradient_clipper(cfg)
    net = nn.Linear(2, 1, bias=False)
    net.weight.grad = torch.tensor([[3.0, 4.0]])
    norm = clip(net)
    assert norm.item() == pytest.approx(5.0)
    assert net.weight.grad.tolist()[0] == pytest.approx([0.6, 0.8], rel=1e-5)
    cfg.SOLVER.CLIP_GRADIENTS.MAX_NORM = 0.0
    with pytest.raises(ValueError, match="MAX_NORM"):
        make_gradient_clipper(cfg)

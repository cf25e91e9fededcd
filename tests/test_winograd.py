"""Winograd F(4x4, 3x3) convolutions for CPU training (drdet/layers/winograd.py), against
torch's direct convolution (F.conv2d), in float64 (where both are exact to rounding) and float32,
forward and every gradient, several maps per call, every tile-border case; the modules that use
it (ResNet, FPN, head) and a detector's training step with and without it."""

import pytest
import torch
import torch.nn.functional as F
from helpers.devices import ISA_PARAMS
from torch import nn

from drdet.layers import winograd
from drdet.layers._ext import ops
from drdet.layers.cpu_isa import use_cpu_isa
from drdet.layers.winograd import (
    WinogradConv2d,
    apply_levels,
    conv3x3_levels,
    set_winograd,
    winograd_conv3x3,
)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# Sizes around the 4-pixel tile: exact multiples, one short, one over, single rows / columns,
# maps smaller than one tile.
SHAPES = [(2, 5, 8, 8), (1, 5, 9, 7), (3, 5, 6, 13), (2, 5, 1, 1), (1, 5, 2, 5), (2, 5, 4, 1)]


@pytest.mark.parametrize("with_bias", [True, False])
def test_levels_match_conv2d_float64_forward_and_gradients(with_bias):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    w = torch.randn(7, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = (
        torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
        if with_bias
        else None
    )
    ys = conv3x3_levels(xs, w, b)
    refs = [F.conv2d(x, w, b, padding=1) for x in xs]
    for y, r in zip(ys, refs):
        assert y.shape == r.shape
        assert _rel(y, r) < 1e-12
        assert y.is_contiguous(memory_format=torch.channels_last)
    grads_out = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for r in refs]
    inputs = xs + [w] + ([b] if with_bias else [])
    got = torch.autograd.grad(ys, inputs, grads_out)
    want = torch.autograd.grad(refs, inputs, grads_out)
    for g, r in zip(got, want):
        assert _rel(g, r) < 1e-12


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    xs = [
        torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 3, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True),
    ]
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b, *xs: tuple(conv3x3_levels(xs, w, b)), (w, b, *xs))


def test_float32_error_is_float32_rounding():
    """Against a float64 reference, the Winograd float32 result stays within 1e-5 of the
    outputs' magnitude (F(4x4, 3x3) amplifies rounding a little more than the direct
    convolution, which is ~1e-6 here); gradients within 1e-4."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, 20, 24, generator=gen, requires_grad=True)
    w = (torch.randn(32, 64, 3, 3, generator=gen) * 0.05).requires_grad_()
    g = torch.randn(2, 32, 20, 24, generator=gen)
    y = winograd_conv3x3(x, w)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.conv2d(x64, w64, padding=1)
    assert _rel(y.double(), ref) < 1e-5
    gx, gw = torch.autograd.grad(y, (x, w), g)
    rx, rw = torch.autograd.grad(ref, (x64, w64), g.double())
    assert _rel(gx.double(), rx) < 1e-4
    assert _rel(gw.double(), rw) < 1e-4


def test_only_the_needed_gradients():
    """Frozen filter (no weight gradient) and an input without gradient (the first trainable
    layer after frozen ones) both work and match F.conv2d."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 7, 9, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    (gx,) = torch.autograd.grad(winograd_conv3x3(xg, w).sum(), xg)
    (rx,) = torch.autograd.grad(F.conv2d(xg, w, padding=1).sum(), xg)
    assert _rel(gx, rx) < 1e-12
    (gw,) = torch.autograd.grad(winograd_conv3x3(x, wg).sum(), wg)
    (rw,) = torch.autograd.grad(F.conv2d(x, wg, padding=1).sum(), wg)
    assert _rel(gw, rw) < 1e-12


def test_second_derivative_raises():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(winograd_conv3x3(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_unused_output_gets_a_zero_gradient():
    gen = torch.Generator().manual_seed(4)
    xs = [
        torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
        for _ in range(2)
    ]
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ys = conv3x3_levels(xs, w)
    gx0, gx1, gw = torch.autograd.grad(ys[0].sum(), xs + [w], allow_unused=True)
    assert gx1 is not None and torch.count_nonzero(gx1) == 0
    (rw,) = torch.autograd.grad(F.conv2d(xs[0], w, padding=1).sum(), w)
    assert _rel(gw, rw) < 1e-12


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_every_instruction_set_copy(isa):
    """The AVX-512, AVX2 and baseline copies of the tile transforms (drdet.layers.cpu_isa
    chooses one) each give the float64 result, forward and gradients."""
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(2, 70, 9, 11, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 70, 5, 3, generator=g, dtype=torch.float64, requires_grad=True),
    ]
    w = torch.randn(6, 70, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    with use_cpu_isa(isa):
        ys = conv3x3_levels(xs, w)
        gs = torch.autograd.grad(sum(y.square().sum() for y in ys), xs + [w])
    rs = [F.conv2d(x, w, padding=1) for x in xs]
    hs = torch.autograd.grad(sum(r.square().sum() for r in rs), xs + [w])
    for a, b in zip(list(ys) + list(gs), rs + list(hs)):
        assert _rel(a, b) < 1e-12


def test_bad_arguments_name_the_map():
    u = torch.zeros(36, 4, 2)
    with pytest.raises(RuntimeError, match=r"xs\[1\] has dtype .* 3 channels"):
        ops.winograd_conv3x3([torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 4, 4)], u, None)
    with pytest.raises(RuntimeError, match=r"xs\[0\] must be float32 or float64"):
        ops.winograd_conv3x3([torch.zeros(1, 4, 4, 4, dtype=torch.float16)], u, None)
    with pytest.raises(RuntimeError, match=r"filter transform must be \(36, C, K\) with C = 4"):
        ops.winograd_conv3x3([torch.zeros(1, 4, 4, 4)], torch.zeros(36, 5, 2), None)
    with pytest.raises(RuntimeError, match=r"bias must be a \(2,\)"):
        ops.winograd_conv3x3([torch.zeros(1, 4, 4, 4)], u, torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"grads\[0\] must be \(N, K, H, W\)"):
        ops.winograd_conv3x3_backward(
            [torch.zeros(1, 3, 4, 4)], [torch.zeros(1, 4, 4, 4)], u, True, True
        )


def test_unsupported_inputs_take_the_direct_convolution():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float16)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float16)
    assert not winograd.winograd_supported(x, w)
    assert torch.equal(
        winograd_conv3x3(x.float(), w.float()), conv3x3_levels([x.float()], w.float())[0]
    )
    y = conv3x3_levels([x], w)[0]  # float16: F.conv2d
    assert y.dtype == torch.float16 and y.shape == (1, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.winograd_supported(x.float(), w.float())


def _conv_calls(monkeypatch):
    calls = []
    apply = winograd._WinogradConv3x3.apply

    def counting(*args):
        calls.append(len(args) - 2)  # number of maps
        return apply(*args)

    monkeypatch.setattr(winograd._WinogradConv3x3, "apply", counting)
    return calls


def test_module_uses_winograd_only_where_it_qualifies(monkeypatch):
    calls = _conv_calls(monkeypatch)
    torch.manual_seed(0)
    conv = WinogradConv2d(128, 64, 3, padding=1)
    plain = nn.Conv2d(128, 64, 3, padding=1)
    plain.load_state_dict(conv.state_dict())  # same state dict keys
    big = torch.randn(2, 128, 32, 32)  # 128 tiles
    small = torch.randn(2, 128, 28, 28)  # 98 tiles < MIN_TILES
    assert _rel(conv(big), plain(big)) < 1e-5 and calls == [1]
    assert torch.equal(conv(small), plain(small)) and calls == [1]
    conv.eval()
    assert torch.equal(conv(big), plain(big)) and calls == [1]
    conv.train()
    set_winograd(conv, False)
    assert torch.equal(conv(big), plain(big)) and calls == [1]
    assert not WinogradConv2d(128, 64, 3, stride=2, padding=1).uses_winograd([big])
    assert not WinogradConv2d(128, 64, 3, padding=2, dilation=2).uses_winograd([big])
    assert not WinogradConv2d(128, 64, 3, padding=1, groups=2).uses_winograd([big])
    assert not WinogradConv2d(128, 36, 3, padding=1).uses_winograd([big])  # few outputs
    assert not WinogradConv2d(64, 64, 3, padding=1).uses_winograd([big[:, :64]])  # few inputs


def test_apply_levels_convolves_all_levels_in_one_call(monkeypatch):
    calls = _conv_calls(monkeypatch)
    torch.manual_seed(0)
    tower = nn.Sequential(
        WinogradConv2d(128, 128, 3, padding=1),
        nn.GroupNorm(32, 128),
        nn.ReLU(),
        WinogradConv2d(128, 128, 3, padding=1),
    )
    levels = [torch.randn(2, 128, s, s) for s in (40, 20, 10, 5, 3)]  # 278 tiles
    out = apply_levels(tower, levels)
    assert calls == [5, 5]
    set_winograd(tower, False)
    for o, x in zip(out, levels):
        assert _rel(o, tower(x)) < 1e-5


def _detector(winograd_on, overrides=()):
    from drdet.config import get_cfg
    from drdet.modeling import build_detector

    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.NUM_CLASSES",
            5,
            "MODEL.BACKBONE.CONV_BODY",
            "R-18-FPN-RETINANET",
            "MODEL.CPU_WINOGRAD",
            winograd_on,
            *overrides,
        ]
    )
    torch.manual_seed(0)
    return build_detector(cfg).train()


@pytest.mark.parametrize(
    "overrides", [(), ("MODEL.RETINANET.USE_GN", True, "MODEL.RETINANET.LOSS_TYPE", "DR")]
)
def test_detector_training_step_with_and_without_winograd(overrides, monkeypatch):
    """Same losses (to float32 rounding) and gradients with MODEL.CPU_WINOGRAD on and off; the
    head convolves all levels in one call per layer; the state dicts are interchangeable."""
    calls = _conv_calls(monkeypatch)
    fast, direct = _detector(True, overrides), _detector(False, overrides)
    direct.load_state_dict(fast.state_dict())
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 256, 320, generator=gen) * 255 for _ in range(2)]  # P3: 160 tiles
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [50.0, 40.0, 150.0, 120.0]]),
            "labels": torch.tensor([1, 3]),
        }
        for _ in range(2)
    ]
    grads = []
    losses = []
    for model in (fast, direct):
        out = model(images, targets)
        sum(out.values()).backward()
        losses.append({k: v.item() for k, v in out.items()})
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert 5 in calls  # the head's layers, five levels per call
    for k in losses[1]:
        assert losses[0][k] == pytest.approx(losses[1][k], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[1].items():
        err = ((grads[0][name] - g).norm() / g.norm().clamp_min(1e-30)).item()
        assert err < 2e-3, name


def test_opcheck_and_torch_compile():
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(1, 3, 5, 6, generator=gen), torch.randn(2, 3, 2, 3, generator=gen)]
    w = torch.randn(4, 3, 3, 3, generator=gen)
    u = winograd._filter_transform(w)
    torch.library.opcheck(ops.winograd_conv3x3.default, (xs, u, torch.randn(4, generator=gen)))
    grads = [torch.randn(x.shape[0], 4, *x.shape[2:], generator=gen) for x in xs]
    for input_grad, weight_grad in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(
            ops.winograd_conv3x3_backward.default, (grads, xs, u, input_grad, weight_grad)
        )

    def step(x, w):
        return winograd_conv3x3(x * 2.0, w).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x1, w1 = xs[0].clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = xs[0].clone().requires_grad_(), w.clone().requires_grad_()
    step(x1, w1).backward()
    compiled(x2, w2).backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)

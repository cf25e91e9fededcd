"""drdet.layers.dr_loss against an independent float64 pure-PyTorch implementation of the
paper's formula (masks + softmax, one group at a time), hand-computed cases, gradcheck, the
appendix-A gradient, edge cases, CUDA vs CPU, opcheck and torch.compile. The tests that take
``op_form`` run twice: with the extension and with the pure-PyTorch form
(drdet/layers/pure_ops.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.devices import DEVICES, ISA_PARAMS
from helpers.dr_loss import (
    NEG_LAMBDA,
    PAIRINGS,
    SMOOTHINGS,
    loss_and_grad,
    random_inputs,
    reference,
)

from drdet.layers import DRLoss, DRLossParams, dr_loss
from drdet.layers._ext import ops
from drdet.layers.cpu_isa import use_cpu_isa


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("grouping", ["none", "sorted", "unsorted"])
def test_matches_reference(device, smoothing, pairing, grouping, op_form):
    groups = None if grouping == "none" else 3
    logits, labels, gids = random_inputs(
        groups=groups, device=device, sorted_groups=grouping == "sorted"
    )
    kw = dict(smoothing=smoothing, pairing=pairing, rho=0.3)
    loss, grad = loss_and_grad(dr_loss, logits, labels, gids, **kw)
    ref_loss, ref_grad = loss_and_grad(reference, logits.double(), labels, gids, **kw)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    assert ref_grad.abs().max() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_float64_matches_reference_tightly(device, op_form):
    logits, labels, gids = random_inputs(groups=2, device=device, dtype=torch.float64)
    loss, grad = loss_and_grad(dr_loss, logits, labels, gids, num_groups=2)
    ref_loss, ref_grad = loss_and_grad(reference, logits, labels, gids, num_groups=2)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13)


def test_hand_computed_all_half(op_form):
    # all logits 0 -> every p = 0.5, so P- = P+ = 0.5 and z = margin = 0.5
    logits = torch.zeros(2, 2)
    labels = torch.tensor([1, 0])
    expected = 4.0 * math.log1p(math.exp(6.0 * 0.5)) / 6.0
    assert dr_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert dr_loss(logits, labels, smoothing="hinge").item() == pytest.approx(2.0, rel=1e-6)
    # quadratic with rho = 1: (0.5 + 1)^2 / 4 = 0.5625; with rho = 0.5 (z >= rho): z = 0.5
    quad = dr_loss(logits, labels, smoothing="quadratic", rho=1.0).item()
    assert quad == pytest.approx(4.0 * 0.5625, rel=1e-6)
    quad = dr_loss(logits, labels, smoothing="quadratic", rho=0.5).item()
    assert quad == pytest.approx(2.0, rel=1e-6)
    # negonly: one positive with p = 0.5, same z
    assert dr_loss(logits, labels, pairing="negonly").item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_two_levels(op_form):
    # negatives: p = 0.75 (x = ln 3) and p = 0.25 (x = -ln 3); positives p = 0.75 and 0.25
    a = math.log(3.0)
    logits = torch.tensor([[a, -a], [-a, a]], dtype=torch.float64)
    labels = torch.tensor([1, 1])  # positives (0,0): 0.75, (1,0): 0.25; negatives 0.25, 0.75
    lam_n, lam_p, tau, L, m = 0.2, 0.5, 3.0, 4.0, 0.3
    wn = [math.exp(0.25 / lam_n), math.exp(0.75 / lam_n)]
    neg_mean = (0.25 * wn[0] + 0.75 * wn[1]) / sum(wn)
    wp = [math.exp(-0.75 / lam_p), math.exp(-0.25 / lam_p)]
    pos_mean = (0.75 * wp[0] + 0.25 * wp[1]) / sum(wp)
    z = neg_mean - pos_mean + m
    expected = tau * math.log1p(math.exp(L * z)) / L
    got = dr_loss(logits, labels, pos_lambda=lam_p, neg_lambda=lam_n, tau=tau, L=L, margin=m)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    negonly = (
        tau * sum(math.log1p(math.exp(L * (neg_mean - pj + m))) / L for pj in (0.75, 0.25)) / 2
    )
    got = dr_loss(
        logits,
        labels,
        pos_lambda=lam_p,
        neg_lambda=lam_n,
        tau=tau,
        L=L,
        margin=m,
        pairing="negonly",
    )
    assert got.item() == pytest.approx(negonly, rel=1e-12)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_gradcheck(smoothing, pairing, op_form):
    logits, labels, gids = random_inputs(
        n=12, c=3, groups=2, dtype=torch.float64, sorted_groups=False
    )
    labels[0], labels[1] = 1, 0  # at least one positive and one negative row
    x = logits.requires_grad_(True)

    def fn(t):
        return dr_loss(t, labels, gids, num_groups=2, smoothing=smoothing, pairing=pairing, rho=0.7)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


def test_appendix_a_gradient(op_form):
    """d loss / d logit from the paper's appendix-A formula, one group, dr pairing."""
    logits, labels, _ = random_inputs(n=40, c=4, dtype=torch.float64)
    lam_p, lam_n, L, m, tau = 1.0, NEG_LAMBDA, 6.0, 0.5, 4.0
    _, grad = loss_and_grad(dr_loss, logits, labels)
    p = logits.sigmoid()
    valid = labels >= 0
    is_pos = (labels[:, None] == torch.arange(1, 5)[None]) & valid[:, None]
    is_neg = ~is_pos & valid[:, None]
    q_n = torch.zeros_like(p)
    q_n[is_neg] = torch.softmax(p[is_neg] / lam_n, 0)
    q_p = torch.zeros_like(p)
    q_p[is_pos] = torch.softmax(-p[is_pos] / lam_p, 0)
    neg_mean, pos_mean = (q_n * p).sum(), (q_p * p).sum()
    g = tau / (1 + math.exp(-L * (neg_mean - pos_mean + m)))
    dp = torch.zeros_like(p)
    dp[is_neg] = (g * q_n * (1 + (p - neg_mean) / lam_n))[is_neg]
    dp[is_pos] = (g * q_p * (-1 + (p - pos_mean) / lam_p))[is_pos]
    torch.testing.assert_close(grad, dp * p * (1 - p), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("device", DEVICES)
def test_group_without_positive_uses_p_plus_one(device, op_form):
    logits = torch.randn(6, 3, dtype=torch.float64, device=device)
    labels = torch.tensor([0, 0, -1, 0, 0, 0], device=device)
    p = logits.sigmoid()[labels >= 0].flatten()
    neg_mean = (torch.softmax(p / NEG_LAMBDA, 0) * p).sum()
    expected = 4.0 * F.softplus(6.0 * (neg_mean - 1.0 + 0.5)) / 6.0
    torch.testing.assert_close(dr_loss(logits, labels), expected)
    # negonly: no positive -> zero loss and zero gradient
    loss, grad = loss_and_grad(dr_loss, logits, labels, pairing="negonly")
    assert loss.item() == 0.0 and not grad.any()


@pytest.mark.parametrize("device", DEVICES)
def test_all_ignored_group_is_not_counted(device, op_form):
    logits, labels, _ = random_inputs(n=20, c=4, device=device, dtype=torch.float64)
    gids = torch.tensor([0] * 10 + [1] * 10, device=device)
    labels[10:] = -1  # group 1 is all ignored
    labels[0] = 2
    loss, grad = loss_and_grad(dr_loss, logits, labels, gids)
    only = dr_loss(logits[:10], labels[:10])
    torch.testing.assert_close(loss, only)  # mean over one group, not two
    assert not grad[10:].any() and grad[:10].abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_all_rows_ignored_and_empty_input(device, op_form):
    for n in (0, 5):
        logits = torch.randn(n, 3, device=device, requires_grad=True)
        labels = torch.full((n,), -1, device=device)
        loss = dr_loss(logits, labels)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert logits.grad.shape == (n, 3) and not logits.grad.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_one_positive_only(device, pairing, op_form):
    logits = torch.randn(1, 5, dtype=torch.float64, device=device)
    labels = torch.tensor([3], device=device)
    loss, grad = loss_and_grad(dr_loss, logits, labels, pairing=pairing)
    ref_loss, ref_grad = loss_and_grad(reference, logits, labels, pairing=pairing)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_positives_without_negatives_use_p_minus_zero(device, op_form):
    logits = torch.randn(4, 1, dtype=torch.float64, device=device)
    labels = torch.ones(4, dtype=torch.long, device=device)
    p = logits.sigmoid().flatten()
    pos_mean = (torch.softmax(-p, 0) * p).sum()
    expected = 4.0 * F.softplus(6.0 * (0.0 - pos_mean + 0.5)) / 6.0
    torch.testing.assert_close(dr_loss(logits, labels), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("magnitude", [30.0, 1e4])
def test_extreme_logits_are_finite(device, magnitude, op_form):
    logits, labels, gids = random_inputs(n=64, c=5, groups=2, device=device)
    logits = torch.sign(logits) * magnitude
    for pairing in PAIRINGS:
        loss, grad = loss_and_grad(dr_loss, logits, labels, gids, pairing=pairing)
        ref_loss, _ = loss_and_grad(reference, logits.double(), labels, gids, pairing=pairing)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_lambda_is_exact(device, op_form):
    # exp(p / 0.005) overflows float32 without a per-group shift; exp((p - 1) / 0.005) underflows
    logits, labels, gids = random_inputs(n=200, c=6, groups=2, device=device, scale=0.3)
    kw = dict(neg_lambda=0.005, pos_lambda=0.005)
    loss, grad = loss_and_grad(dr_loss, logits, labels, gids, **kw)
    ref_loss, ref_grad = loss_and_grad(reference, logits.double(), labels, gids, **kw)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-6)


@pytest.mark.extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inv_lambda", [2.0, 64.0, 65.0])
@pytest.mark.parametrize("c", [1, 8, 21, 80])
def test_fixed_and_row_max_shift_paths(device, inv_lambda, c):
    # the CPU kernel uses the fixed softmax shift (one vectorised pass, masked tail) when
    # 1 / lambda <= 64 and the per-row maximum otherwise; both must match the reference for
    # every column count (full 8-wide blocks, tails, the positive column in either)
    logits, labels, gids = random_inputs(n=400, c=c, groups=3, device=device, scale=3.0)
    kw = dict(neg_lambda=1.0 / inv_lambda, pos_lambda=1.0 / inv_lambda)
    for pairing in PAIRINGS:
        loss, grad = loss_and_grad(dr_loss, logits, labels, gids, pairing=pairing, **kw)
        ref_loss, ref_grad = loss_and_grad(
            reference, logits.double(), labels, gids, pairing=pairing, **kw
        )
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.extension
@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_every_cpu_instruction_set(isa):
    # the CPU kernel has AVX-512, AVX2 and baseline loops (drdet.layers.cpu_isa); each must meet
    # the reference in the fixed-shift (1 / lambda <= 64) and row-maximum cases above
    with use_cpu_isa(isa):
        for c in (1, 8, 21, 80):
            for inv_lambda in (2.0, 64.0, 65.0):
                test_fixed_and_row_max_shift_paths("cpu", inv_lambda, c)
        test_matches_reference("cpu", "logistic", "dr", "unsorted", "extension")
        test_low_precision_inputs("cpu", torch.float16, "extension")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype, op_form):
    logits, labels, gids = random_inputs(n=500, c=8, groups=2, device=device, dtype=dtype)
    loss, grad = loss_and_grad(dr_loss, logits, labels, gids)
    # the reference sees the same (rounded) logits, in float64
    ref_loss, ref_grad = loss_and_grad(reference, logits.double(), labels, gids)
    # the loss is float32, not rounded to the logits' dtype (issue #22): float32 accuracy
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(
        grad.double(), ref_grad, rtol=4 * tol, atol=4 * tol * ref_grad.abs().max().item()
    )


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, op_form):
    logits, labels, gids = random_inputs(n=50, c=6, groups=3, device=device)
    wide = torch.randn(6, 50, device=device)
    wide.copy_(logits.t())
    strided_logits = wide.t()  # (50, 6) with strides (1, 50)
    assert not strided_logits.is_contiguous()
    labels2 = torch.stack([labels, labels], 1)[:, 0]
    gids2 = torch.stack([gids, gids], 1)[:, 1]
    loss, grad = loss_and_grad(dr_loss, strided_logits, labels2, gids2)
    ref_loss, ref_grad = loss_and_grad(dr_loss, logits, labels, gids)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_unsorted_group_ids_equal_sorted(device, op_form):
    logits, labels, gids = random_inputs(
        n=120, c=4, groups=4, device=device, dtype=torch.float64, sorted_groups=False
    )
    perm = torch.argsort(gids)
    loss, grad = loss_and_grad(dr_loss, logits, labels, gids)
    loss_s, grad_s = loss_and_grad(dr_loss, logits[perm], labels[perm], gids[perm])
    torch.testing.assert_close(loss, loss_s)
    torch.testing.assert_close(grad[perm], grad_s)


def test_num_groups_and_int32_inputs(op_form):
    logits, labels, gids = random_inputs(n=60, c=4, groups=2, dtype=torch.float64)
    # an explicit num_groups larger than max + 1 adds empty (uncounted) groups
    a = dr_loss(logits, labels, gids, num_groups=5)
    b = dr_loss(logits, labels.int(), gids.int())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, reference(logits, labels, gids))


@pytest.mark.extension
def test_deterministic_across_thread_counts():
    logits, labels, gids = random_inputs(n=5000, c=20, groups=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss_and_grad(dr_loss, logits, labels, gids)
        torch.set_num_threads(max(2, threads))
        many = loss_and_grad(dr_loss, logits, labels, gids)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_module_matches_function(op_form):
    logits, labels, gids = random_inputs(groups=2)
    module = DRLoss(neg_lambda=0.2, smoothing="quadratic", rho=0.4, pairing="negonly")
    expected = dr_loss(
        logits, labels, gids, neg_lambda=0.2, smoothing="quadratic", rho=0.4, pairing="negonly"
    )
    torch.testing.assert_close(module(logits, labels, gids), expected)
    assert "negonly" in repr(module)


def test_params_object_and_keywords_are_the_same_loss(op_form):
    logits, labels, gids = random_inputs(groups=3)
    fields = dict(
        pos_lambda=0.7,
        neg_lambda=0.05,
        L=4.0,
        margin=0.3,
        tau=2.0,
        smoothing="quadratic",
        rho=0.6,
        pairing="negonly",
    )
    params = DRLossParams(**fields)
    expected = reference(logits, labels, gids, 3, **fields)
    torch.testing.assert_close(dr_loss(logits, labels, gids, params=params).double(), expected)
    torch.testing.assert_close(DRLoss(params)(logits, labels, gids).double(), expected)
    # keywords replace fields of params; the rest keeps params' values
    hinge = reference(logits, labels, gids, 3, **{**fields, "smoothing": "hinge"})
    torch.testing.assert_close(
        dr_loss(logits, labels, gids, params=params, smoothing="hinge").double(), hinge
    )
    assert params.smoothing == "quadratic"  # frozen, not modified by the override


@pytest.mark.extension
def test_params_defaults_and_op_argument_order():
    params = DRLossParams()
    assert params.as_op_args() == (1.0, 0.1 / math.log(3.5), 6.0, 0.5, 4.0, "logistic", 0.5, "dr")
    # the op's schema lists the parameters in the dataclass' field order
    schema = ops.dr_loss_forward.default._schema
    names = [a.name for a in schema.arguments][4:]
    assert names == [
        "pos_lambda",
        "neg_lambda",
        "L",
        "margin",
        "tau",
        "smoothing",
        "rho",
        "pairing",
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tau=0.0), "tau must be"),
        (dict(margin=-0.5), "margin must be"),
        (dict(L=float("inf")), "L must be"),
        (dict(rho=-1.0), "rho must be"),
    ],
)
def test_params_validate_once_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        DRLossParams(**kwargs)
    assert err.value.field == next(iter(kwargs))
    assert err.value.config_key == f"MODEL.DR_LOSS.{next(iter(kwargs)).upper()}"
    logits, labels, _ = random_inputs(n=10, c=3)
    with pytest.raises(ValueError, match=match):
        dr_loss(logits, labels, **kwargs)


def test_unknown_keyword_is_a_type_error():
    logits, labels, _ = random_inputs(n=10, c=3)
    with pytest.raises(TypeError, match="lambda_pos"):
        dr_loss(logits, labels, lambda_pos=1.0)


# ---------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pos_lambda=0.0), "pos_lambda"),
        (dict(neg_lambda=-1.0), "neg_lambda"),
        (dict(L=0.0), "L must be"),
        (dict(smoothing="cubic"), "smoothing"),
        (dict(pairing="all"), "pairing"),
        (dict(smoothing="quadratic", rho=0.0), "rho"),
        (dict(num_groups=0), "num_groups"),
    ],
)
def test_bad_parameters(kwargs, match):
    logits, labels, _ = random_inputs(n=10, c=3)
    with pytest.raises(ValueError, match=match):
        dr_loss(logits, labels, **kwargs)


def test_bad_inputs(op_form):
    logits, labels, gids = random_inputs(n=10, c=3, groups=2)
    with pytest.raises(RuntimeError, match="labels must lie in"):
        dr_loss(logits, torch.full((10,), 4))
    with pytest.raises(RuntimeError, match="labels must lie in"):
        dr_loss(logits, torch.full((10,), -2))
    with pytest.raises(RuntimeError, match="group_ids must lie in"):
        dr_loss(logits, labels, gids + 5, num_groups=2)
    with pytest.raises(RuntimeError, match="logits must be"):
        dr_loss(logits.flatten(), labels)
    with pytest.raises(RuntimeError, match="labels must be"):
        dr_loss(logits, labels[:5])
    with pytest.raises(RuntimeError, match="labels must be int64 or int32"):
        dr_loss(logits, labels.float())
    with pytest.raises(RuntimeError, match="group_ids must be"):
        dr_loss(logits, labels, gids[:3], num_groups=2)


# ---------------------------------------------------------------- CUDA vs CPU, dispatcher


@pytest.mark.extension
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_cuda_matches_cpu(dtype, pairing):
    logits, labels, gids = random_inputs(n=3000, c=80, groups=4, dtype=dtype, sorted_groups=False)
    cpu = loss_and_grad(dr_loss, logits, labels, gids, pairing=pairing)
    gpu = loss_and_grad(dr_loss, logits.cuda(), labels.cuda(), gids.cuda(), pairing=pairing)
    tol = 1e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=tol, atol=tol)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=10 * tol, atol=tol * 1e-2)


@pytest.mark.extension
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits, labels, gids = random_inputs(n=40, c=5, groups=2, device=device)
    args = (
        logits.requires_grad_(True),
        labels,
        gids,
        2,
        1.0,
        NEG_LAMBDA,
        6.0,
        0.5,
        4.0,
        "logistic",
        0.5,
        "dr",
    )
    torch.library.opcheck(ops.dr_loss_forward.default, args)
    args_negonly = args[:9] + ("quadratic", 0.5, "negonly")
    torch.library.opcheck(ops.dr_loss_forward.default, args_negonly)
    torch.library.opcheck(ops.dr_loss_forward.default, (logits, labels, None) + args[3:])


@pytest.mark.extension
def test_torch_compile_fullgraph():
    logits, labels, gids = random_inputs(n=64, c=5, groups=2)

    def step(x):
        return dr_loss(x, labels, gids, num_groups=2) * 2.0

    try:
        compiled = torch.compile(step, fullgraph=True)
        loss, grad = loss_and_grad(compiled, logits)
    except Exception as e:  # the inductor CPU backend needs a working C++ toolchain
        if "Compiler" in type(e).__name__ or "InductorError" in type(e).__name__:
            pytest.skip(f"inductor CPU compile unavailable here: {type(e).__name__}")
        raise
    ref_loss, ref_grad = loss_and_grad(step, logits)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)

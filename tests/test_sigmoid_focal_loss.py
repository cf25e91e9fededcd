"""drdet.layers.sigmoid_focal_loss against torchvision's Python focal loss.

The reference builds the one-hot targets and the ignore mask from the labels and sums
torchvision.ops.sigmoid_focal_loss(reduction="none") over the non-ignored rows. The float32 CPU
kernels (AVX-512 / AVX2 loops with polynomial exp and log1p) are also checked entry by entry
against a float64 reference with an error bound, on every instruction-set path. The tests that
take ``op_form`` run twice: with the extension and with the pure-PyTorch form
(drdet/layers/pure_ops.py), which meets the same bounds.
"""

import pytest
import torch
from helpers.devices import DEVICES, ISA_PARAMS
from torchvision.ops import sigmoid_focal_loss as tv_focal_loss

from drdet.layers import SigmoidFocalLoss, sigmoid_focal_loss
from drdet.layers.cpu_isa import use_cpu_isa


def reference_loss(logits, labels, gamma=2.0, alpha=0.25):
    """Summed focal loss with drdet's labels (-1 ignored, 0 background, k class k)."""
    num_classes = logits.shape[1]
    targets = torch.zeros_like(logits)
    fg = labels > 0
    targets[fg.nonzero()[:, 0], labels[fg] - 1] = 1.0
    per_entry = tv_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    valid = (labels >= 0).to(logits.dtype)[:, None].expand(-1, num_classes)
    return (per_entry * valid).sum()


def random_case(n, c, device="cpu", dtype=torch.float64, scale=3.0):
    logits = (torch.randn(n, c, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    labels = torch.randint(-1, c + 1, (n,), device=device)
    return logits, labels


def loss_and_grad(fn, logits, labels, **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, labels, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "gamma,alpha", [(2.0, 0.25), (0.0, 0.25), (0.5, 0.75), (3.0, 0.0), (1.0, 1.0)]
)
def test_matches_torchvision(device, gamma, alpha, op_form):
    logits, labels = random_case(300, 11, device)
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, labels, gamma=gamma, alpha=alpha)
    ref_loss, ref_grad = loss_and_grad(reference_loss, logits, labels, gamma=gamma, alpha=alpha)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_matches_torchvision(device, op_form):
    logits, labels = random_case(2000, 80, device, dtype=torch.float32)
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, labels)
    ref_loss, ref_grad = loss_and_grad(reference_loss, logits.double(), labels)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ignored_rows_contribute_nothing(device, op_form):
    logits, labels = random_case(64, 5, device)
    labels[::3] = -1
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, labels)
    changed = logits.clone()
    changed[labels == -1] = 1e3  # would dominate the loss if the rows were counted
    loss_changed, _ = loss_and_grad(sigmoid_focal_loss, changed, labels)
    torch.testing.assert_close(loss, loss_changed)
    assert torch.all(grad[labels == -1] == 0)
    assert torch.any(grad[labels != -1] != 0)

    all_ignored = torch.full_like(labels, -1)
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, all_ignored)
    assert loss.item() == 0.0 and torch.all(grad == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_all_background(device, op_form):
    logits, _ = random_case(128, 7, device)
    labels = torch.zeros(128, dtype=torch.long, device=device)
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, labels)
    ref_loss, ref_grad = loss_and_grad(reference_loss, logits, labels)
    # By hand: every entry is a negative, (1 - alpha) * p^gamma * softplus(x).
    p = torch.sigmoid(logits)
    by_hand = (0.75 * p**2 * torch.nn.functional.softplus(logits)).sum()
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("magnitude", [30.0, 1e4])
def test_large_logits_are_finite_and_correct(device, magnitude, op_form):
    base = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    # Rows of +-m: positives and negatives that are confidently right and confidently wrong.
    logits = (torch.stack([base, -base] * 3) * magnitude).to(device)
    labels = torch.tensor([0, 0, 1, 1, 4, -1], device=device)
    for dtype in (torch.float64, torch.float32):
        x = logits.to(dtype)
        loss, grad = loss_and_grad(sigmoid_focal_loss, x, labels)
        assert torch.isfinite(loss) and torch.all(torch.isfinite(grad))
        ref_loss, ref_grad = loss_and_grad(reference_loss, logits, labels)
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-6, atol=1e-6)
    # Wrong answers at confidence m cost alpha_t * m each; right ones cost ~0.
    assert loss.item() > magnitude * 0.25


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(device, dtype, op_form):
    logits, labels = random_case(4000, 80, device, dtype=dtype)
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, labels)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    # Reference on the same (rounded) logits in float64: only the output rounding differs.
    ref_loss, ref_grad = loss_and_grad(reference_loss, logits.double(), labels)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, op_form):
    logits, labels = random_case(90, 12, device)
    x = logits.t().contiguous().t()[::2, 1:]  # column-major, then strided rows and columns
    y = torch.stack([labels.clamp(max=11), labels], 1)[::2, 0]
    assert not x.is_contiguous() and not y.is_contiguous()
    loss, grad = loss_and_grad(sigmoid_focal_loss, x, y)
    ref_loss, ref_grad = loss_and_grad(reference_loss, x.contiguous(), y.contiguous())
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_input(device, op_form):
    logits = torch.zeros(0, 80, device=device, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long, device=device)
    loss = sigmoid_focal_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 80)


@pytest.mark.parametrize("device", DEVICES)
def test_int32_labels(device, op_form):
    logits, labels = random_case(50, 6, device)
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, labels.int()), sigmoid_focal_loss(logits, labels)
    )


def test_gradcheck(op_form):
    logits, labels = random_case(20, 5)
    logits.requires_grad_(True)
    for gamma, alpha in [(2.0, 0.25), (0.5, 0.6)]:
        assert torch.autograd.gradcheck(
            lambda x, g=gamma, a=alpha: sigmoid_focal_loss(x, labels, gamma=g, alpha=a), (logits,)
        )


@pytest.mark.extension
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits, labels = random_case(30, 4, device, dtype=torch.float32)
    torch.library.opcheck(torch.ops.drdet.sigmoid_focal_loss, (logits, labels, 2.0, 0.25))
    torch.library.opcheck(
        torch.ops.drdet.sigmoid_focal_loss, (logits.requires_grad_(True), labels, 2.0, 0.25)
    )
    grad_loss = torch.tensor(0.5, device=device)
    torch.library.opcheck(
        torch.ops.drdet.sigmoid_focal_loss_backward, (grad_loss, logits.detach(), labels, 2.0, 0.25)
    )


@pytest.mark.extension
def test_torch_compile_traces_the_op():
    logits, labels = random_case(40, 3, dtype=torch.float32)

    def f(x, y):
        return sigmoid_focal_loss(x * 2.0, y) / 3.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    f(x1, labels).backward()
    compiled(x2, labels).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_module(op_form):
    logits, labels = random_case(33, 9)
    module = SigmoidFocalLoss(gamma=1.5, alpha=0.4)
    torch.testing.assert_close(
        module(logits, labels), reference_loss(logits, labels, gamma=1.5, alpha=0.4)
    )
    assert "gamma=1.5" in repr(module)


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda x, y: (x[0], y), "logits must be"),
        (lambda x, y: (x, y[:-1]), "labels must be"),
        (lambda x, y: (x.long(), y), "logits must be float"),
        (lambda x, y: (x, y.float()), "labels must be int"),
        (lambda x, y: (x, torch.full_like(y, 6)), r"labels must be in \[-1, C\]"),
        (lambda x, y: (x, torch.full_like(y, -2)), r"labels must be in \[-1, C\]"),
    ],
)
def test_bad_inputs_raise(make_args, message, op_form):
    logits, labels = random_case(8, 5)
    with pytest.raises(RuntimeError, match=message):
        sigmoid_focal_loss(*make_args(logits, labels))


def test_bad_hyperparameters_raise(op_form):
    logits, labels = random_case(8, 5)
    with pytest.raises(RuntimeError, match="gamma"):
        sigmoid_focal_loss(logits, labels, gamma=-1.0)
    with pytest.raises(RuntimeError, match="alpha"):
        sigmoid_focal_loss(logits, labels, alpha=1.5)


@pytest.mark.extension
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cuda_matches_cpu(dtype):
    logits, labels = random_case(20000, 80, dtype=dtype)
    labels[::7] = -1
    cpu_loss, cpu_grad = loss_and_grad(sigmoid_focal_loss, logits, labels)
    gpu_loss, gpu_grad = loss_and_grad(sigmoid_focal_loss, logits.cuda(), labels.cuda())
    assert gpu_loss.dtype == cpu_loss.dtype and gpu_grad.dtype == cpu_grad.dtype
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, rtol=rtol, atol=1e-6)
    # The same per-entry function runs on both; only libm vs CUDA math rounding may differ.
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad)
    # Deterministic: a fixed grid and a fixed reduction order.
    again, _ = loss_and_grad(sigmoid_focal_loss, logits.cuda(), labels.cuda())
    assert torch.equal(again, gpu_loss)


# --- the float32 CPU kernels (vector loops) against float64, entry by entry ---------------------

EPS32 = 2.0**-24  # float32 rounding unit
TINY32 = torch.finfo(torch.float32).tiny  # results below the smallest normal float may be 0


def entry_reference(logits, labels, gamma, alpha):
    """float64 per-entry loss, d loss / d logits and softplus(-z) (z the signed logit: x for a
    negative, -x for a positive), computed stably for any logit; 0 in ignored rows."""
    x = logits.double()
    num_classes = x.shape[1]
    pos = (labels[:, None] - 1) == torch.arange(num_classes)[None, :]
    z = torch.where(pos, -x, x)
    softplus_z = torch.logaddexp(torch.zeros_like(z), z)
    softplus_neg_z = torch.logaddexp(torch.zeros_like(z), -z)
    q = torch.sigmoid(z)
    mod = torch.exp(-gamma * softplus_neg_z)  # q ** gamma, 1 for gamma = 0
    w = torch.where(pos, alpha, 1.0 - alpha).double()
    loss = w * mod * softplus_z
    dz = mod * (gamma * (1.0 - q) * softplus_z + q)
    grad = w * torch.where(pos, -dz, dz)
    valid = (labels >= 0)[:, None]
    return loss * valid, grad * valid, softplus_neg_z


def assert_within_float_rounding(logits, labels, gamma, alpha):
    """The float32 kernels against entry_reference on the same (float32) logits. Bound per entry:
    16 roundings, times 1 + gamma * softplus(-z), the amplification of a rounding of softplus(-z)
    by exp(-gamma * softplus(-z)) inherent to float32 (the scalar path needs it too), plus twice
    the smallest normal float (results below it may be flushed to 0); the summed loss may add C
    roundings per row."""
    num_classes = logits.shape[1]
    loss, grad = loss_and_grad(sigmoid_focal_loss, logits, labels, gamma=gamma, alpha=alpha)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    ref_loss, ref_grad, softplus_neg_z = entry_reference(logits, labels, gamma, alpha)
    rel = 16 * EPS32 * (1.0 + gamma * softplus_neg_z)
    err = (grad.double() - ref_grad).abs()
    bound = rel * ref_grad.abs() + 2 * TINY32
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"gradient error {worst:.2f} x the bound (gamma={gamma}, alpha={alpha})"
    ignored = labels < 0
    assert torch.all(grad[ignored] == 0)
    loss_bound = ((rel + num_classes * EPS32) * ref_loss + 2 * TINY32).sum().item()
    assert abs(loss.item() - ref_loss.sum().item()) <= loss_bound, (loss.item(), ref_loss.sum())


EXTREME_LOGITS = [
    0.0,
    -0.0,
    1e-30,
    -1e-30,
    1e-6,
    -1e-6,
    15.0,
    -15.0,
    20.5,
    -20.5,
    87.0,
    -87.0,
    87.4,
    -87.4,
    88.8,
    -88.8,
    100.0,
    -100.0,
    104.0,
    -104.0,
    1e4,
    -1e4,
    1e30,
    -1e30,
]


@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_float32_kernels_within_float_rounding(gamma, alpha, op_form):
    """Random sizes, column counts around the 8 and 16 lanes, ignored rows, int32 and int64
    labels, moderate and extreme logits, at every label (background, each class, ignored)."""
    gen = torch.Generator().manual_seed(int(gamma * 10 + alpha * 100))
    for num_classes in (1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 80, 91):
        num_rows = int(torch.randint(1, 200, (1,), generator=gen))
        logits = torch.randn(num_rows, num_classes, generator=gen, dtype=torch.float64) * 6.0
        labels = torch.randint(-1, num_classes + 1, (num_rows,), generator=gen)
        extreme = torch.rand(num_rows, num_classes, generator=gen) < 0.2
        picks = torch.randint(0, len(EXTREME_LOGITS), (num_rows, num_classes), generator=gen)
        logits = torch.where(
            extreme, torch.tensor(EXTREME_LOGITS, dtype=torch.float64)[picks], logits
        ).float()
        if num_classes % 2:
            labels = labels.int()
        assert_within_float_rounding(logits, labels, gamma, alpha)


@pytest.mark.extension
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_float32_kernels_over_the_logit_range(gamma):
    """Every 1/1000 of a unit in [-110, 110], logarithmically spaced small logits and the
    extremes, each as a negative and as a positive; the sum over 320k x 2 entries takes several
    threads (the forward reduces in double across rows)."""
    xs = torch.cat(
        [
            torch.linspace(-110, 110, 220001, dtype=torch.float64),
            torch.logspace(-30, 2, 20001, dtype=torch.float64),
            -torch.logspace(-30, 2, 20001, dtype=torch.float64),
            torch.tensor(EXTREME_LOGITS, dtype=torch.float64),
        ]
    ).float()
    xs = xs[: xs.numel() // 4 * 4]
    for label in (0, 4, 2, -1):  # columns 0-3: negatives, a positive at 3 or 1, ignored
        logits = xs.reshape(-1, 4)
        labels = torch.full((logits.shape[0],), label)
        assert_within_float_rounding(logits, labels, gamma, 0.25)
    # The loss of single entries (the sums above dilute the error of one entry).
    sample = xs[::100]
    for label in (0, 1):
        labels = torch.full((1,), label)
        losses = torch.stack(
            [sigmoid_focal_loss(v.view(1, 1), labels, gamma, 0.25) for v in sample]
        )
        ref, _, softplus_neg_z = entry_reference(
            sample[:, None], labels.expand(len(sample)), gamma, 0.25
        )
        bound = 16 * EPS32 * (1.0 + gamma * softplus_neg_z[:, 0]) * ref[:, 0] + 2 * TINY32
        worst = ((losses.double() - ref[:, 0]).abs() / bound).max().item()
        assert worst <= 1.0, f"loss error {worst:.2f} x the bound (gamma={gamma}, label={label})"


def test_float32_kernels_limits_and_nan(op_form):
    x = torch.tensor([[100.0, -100.0, 1e4, -1e4, 3e38]])
    wrong_negatives = 0.75 * (100.0 + 1e4 + 3e38)
    # Confidently right entries cost 0 with gradient 0; confidently wrong ones cost alpha_t * |x|
    # with gradient 1 - alpha for a negative, -alpha for a positive (column 1 at -100).
    for label, expected, expected_grad in [
        (0, wrong_negatives, [0.75, 0.0, 0.75, 0.0, 0.75]),
        (2, wrong_negatives + 25.0, [0.75, -0.25, 0.75, 0.0, 0.75]),
    ]:
        loss, grad = loss_and_grad(sigmoid_focal_loss, x, torch.tensor([label]))
        torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(grad, torch.tensor([expected_grad]))
    x = torch.tensor([[-100.0, 100.0, -1e4, -3e38]])  # column 1 positive at +100: all right
    loss, grad = loss_and_grad(sigmoid_focal_loss, x, torch.tensor([2]))
    assert loss.item() == 0.0 and torch.all(grad == 0)
    # A NaN logit makes the loss and its entry's gradient NaN, unless its row is ignored.
    x = torch.zeros(3, 20)
    x[1, 17] = float("nan")
    x[2, 5] = float("nan")
    loss, grad = loss_and_grad(sigmoid_focal_loss, x, torch.tensor([0, 0, -1]))
    assert torch.isnan(loss) and torch.isnan(grad[1, 17]) and torch.isfinite(grad[0]).all()
    assert torch.all(grad[2] == 0)
    loss, _ = loss_and_grad(sigmoid_focal_loss, x, torch.tensor([0, -1, -1]))
    assert torch.isfinite(loss)


@pytest.mark.extension
@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_every_instruction_set_path(isa):
    """The CPU kernels have AVX-512 and AVX2 loops and the scalar per-entry math (baseline),
    chosen with drdet.layers.cpu_isa; every path must meet the same bounds."""
    with use_cpu_isa(isa):
        for gamma in (0.0, 1.5, 2.0):
            for alpha in (0.0, 0.25, 1.0):
                test_float32_kernels_within_float_rounding(gamma, alpha, "extension")
            test_float32_kernels_over_the_logit_range(gamma)
        test_float32_kernels_limits_and_nan("extension")
        test_float32_matches_torchvision("cpu", "extension")
        test_ignored_rows_contribute_nothing("cpu", "extension")
        for dtype in (torch.float16, torch.bfloat16):
            test_half_precision_accumulates_in_float32("cpu", dtype, "extension")

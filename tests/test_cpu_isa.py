"""The CPU instruction-set selector (drdet.layers.cpu_isa, csrc/cpu/simd.h) and the vectorised
exp of every set, checked against torch.exp in float64.

helpers.devices.ISA_PARAMS parametrises a test over every set, skipping those this CPU lacks; the
kernel tests (test_dr_loss.py, test_sigmoid_focal_loss.py, test_winograd.py) use it too.
"""

import os
import subprocess
import sys

import pytest
import torch
from helpers.devices import ISA_PARAMS

from drdet.layers._ext import ops
from drdet.layers.cpu_isa import CPU_ISAS, cpu_isa, set_cpu_isa, supported_cpu_isas, use_cpu_isa

SUPPORTED = supported_cpu_isas()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLT_MIN = torch.finfo(torch.float32).tiny
EXP_LOW = -87.3365478515625  # simd.h's kExpLow: below it the vector exp flushes to 0
EXP_MAX_ARG = 88.72283935546875  # the least float whose exp overflows float
# Bound on the relative error of the vector exp where FLT_MIN <= exp(x) <= FLT_MAX: the 7.7e-8
# measured on every float (simd.h), rounded up. libm's float exp (baseline) is within 0.5 ulp.
EXP_RTOL = 8e-8


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _expected_from_environment():
    best = SUPPORTED[-1]
    if _env_flag("DRDET_NO_AVX2"):
        return "baseline"
    if _env_flag("DRDET_NO_AVX512") and best == "avx512":
        return "avx2"
    return best


def test_supported_sets_are_a_prefix_of_all_sets():
    assert SUPPORTED == list(CPU_ISAS[: len(SUPPORTED)]) and SUPPORTED[0] == "baseline"


def test_default_is_the_best_set_the_environment_allows():
    # tests leave the choice as they found it (use_cpu_isa), so the process default remains
    assert cpu_isa() == _expected_from_environment()


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, None),
        ({"DRDET_NO_AVX512": "1"}, "avx2"),
        ({"DRDET_NO_AVX2": "1"}, "baseline"),
        ({"DRDET_NO_AVX2": "0"}, None),
    ],
)
def test_environment_variables_at_import(env, expected):
    best = SUPPORTED[-1]
    if expected is None or CPU_ISAS.index(expected) > CPU_ISAS.index(best):
        expected = best
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRDET_NO_AVX")}
    clean["PYTHONPATH"] = os.pathsep.join([ROOT, clean.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", "import drdet.layers as L; print(L.cpu_isa())"],
        env=dict(clean, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_use_cpu_isa_sets_and_restores(isa):
    before = cpu_isa()
    with use_cpu_isa(isa) as name:
        assert name == isa and cpu_isa() == isa
    assert cpu_isa() == before
    with pytest.raises(KeyError):
        with use_cpu_isa(isa):
            raise KeyError("inside")
    assert cpu_isa() == before


def test_unknown_or_unsupported_sets_are_refused():
    before = cpu_isa()
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse9'.*baseline, avx2"):
        set_cpu_isa("sse9")
    for name in CPU_ISAS[len(SUPPORTED) :]:
        with pytest.raises(RuntimeError, match=f"does not support {name}"):
            set_cpu_isa(name)
    assert cpu_isa() == before


def _exp_inputs():
    """A dense sample of float32 arguments: a fine grid over the whole range, random floats,
    the ends of the range and the special values."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.linspace(-110.0, 100.0, 3_000_001, dtype=torch.float32)
    rand = torch.empty(1_000_000).uniform_(-88.0, 89.0, generator=gen)
    near_zero = torch.randn(200_000, generator=gen) * 1e-3
    edges = torch.tensor([EXP_LOW, EXP_LOW, EXP_MAX_ARG, 0.0, -0.0, 1e-45, -1e-45])
    edges[1] = torch.nextafter(edges[1], torch.tensor(0.0))
    ends = torch.cat([edges, torch.nextafter(torch.tensor([EXP_MAX_ARG]), torch.tensor(0.0))])
    return torch.cat([grid, rand, near_zero, ends])


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_vector_exp_against_float64(isa):
    x = _exp_inputs()
    with use_cpu_isa(isa):
        y = ops._cpu_exp(x)
        special = ops._cpu_exp(
            torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
        )
    ref = torch.exp(x.double())
    normal = (ref >= FLT_MIN) & (ref <= torch.finfo(torch.float32).max)
    rel = ((y.double() - ref).abs() / ref)[normal]
    assert rel.max().item() <= EXP_RTOL, (isa, rel.max().item(), x[normal][rel.argmax()].item())
    assert torch.isinf(y[x >= EXP_MAX_ARG]).all() and torch.isfinite(y[x < EXP_MAX_ARG]).all()
    tiny = ref < FLT_MIN  # flushed to 0 by the vector sets, gradual underflow in libm's
    assert (y[tiny].double() - ref[tiny]).abs().max().item() <= FLT_MIN
    if isa != "baseline":
        assert torch.all(y[x < EXP_LOW] == 0) and torch.all(y[x >= EXP_LOW] > 0)
    assert torch.isnan(special[0]) and special[1] == float("inf") and special[2] == 0
    assert special[3] == float("inf") and special[4] == 0


def test_vector_exps_agree_bit_for_bit():
    # the AVX2 and AVX-512 exps are the same arithmetic on 8 or 16 lanes
    vector = [name for name in SUPPORTED if name != "baseline"]
    if len(vector) < 2:
        pytest.skip("this CPU has fewer than two vector sets")
    x = _exp_inputs()
    outs = []
    for name in vector:
        with use_cpu_isa(name):
            outs.append(ops._cpu_exp(x))
    assert torch.equal(outs[0], outs[1])


def test_kernels_follow_the_choice():
    # the baseline loops (std::exp, scalar math) and the vector loops (simd.h's exp) round
    # differently, so gradients over many entries differ in their last bits when, and only
    # when, each kernel runs the set chosen; the DR loss once ignored DRDET_NO_AVX2
    from drdet.layers import dr_loss, sigmoid_focal_loss

    vector = [name for name in SUPPORTED if name != "baseline"]
    if not vector:
        pytest.skip("this CPU has no vector set")
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3000, 80, generator=gen) * 3
    labels = torch.randint(-1, 81, (3000,), generator=gen)
    for loss_fn in (dr_loss, sigmoid_focal_loss):
        grads = {}
        for name in ("baseline", vector[-1]):
            with use_cpu_isa(name):
                x = logits.clone().requires_grad_(True)
                (grads[name],) = torch.autograd.grad(loss_fn(x, labels), x)
        baseline, best = grads["baseline"], grads[vector[-1]]
        assert not torch.equal(baseline, best), loss_fn.__name__
        torch.testing.assert_close(best, baseline, rtol=1e-4, atol=1e-7)

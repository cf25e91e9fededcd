"""Parametrisation over the devices, CPU instruction sets and CUDA kernel versions a test runs
on. The CUDA entries carry the ``cuda`` mark, which conftest.py skips where no GPU is visible."""

from __future__ import annotations

import pytest

from drdet.layers._ext import CUDA_KERNELS_ENV
from drdet.layers.cpu_isa import CPU_ISAS, supported_cpu_isas

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cuda),
]

_SUPPORTED_ISAS = supported_cpu_isas()
# Every CPU instruction set of csrc/cpu/simd.h, skipping those this CPU lacks.
ISA_PARAMS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            name not in _SUPPORTED_ISAS, reason=f"this CPU does not support {name}"
        ),
    )
    for name in CPU_ISAS
]

# The CPU kernels and both versions of the CUDA kernels (DRDET_CUDA_KERNELS=v1 or v2).
BACKENDS = [
    "cpu",
    pytest.param("cuda-v1", marks=pytest.mark.cuda),
    pytest.param("cuda-v2", marks=pytest.mark.cuda),
]


def use_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Selects the CUDA kernel version of a BACKENDS name; returns its device."""
    if backend == "cpu":
        return "cpu"
    monkeypatch.setenv(CUDA_KERNELS_ENV, backend.split("-")[1])
    return "cuda"

"""The instruction set of drdet's CPU kernels (csrc/cpu/simd.h), chosen from Python.

The DR loss, sigmoid focal loss and Winograd CPU kernels have AVX-512, AVX2 + FMA and baseline
(portable) loops, and all of them run the loops of one process-wide choice: at import the best
set the CPU supports, lowered by the environment variables ``DRDET_NO_AVX512=1`` (at most
AVX2) and ``DRDET_NO_AVX2=1`` (baseline). :func:`set_cpu_isa` and :func:`use_cpu_isa` change it
at run time, e.g. to test every set on one machine or to compare their speed.

Without the extension (drdet/layers/_ext.py) there are no such loops: the pure-PyTorch forms
run whatever torch runs, and these functions report (and accept only) "baseline".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from drdet.layers._ext import BUILD_HINT, extension_loaded, ops

__all__ = ["CPU_ISAS", "cpu_isa", "set_cpu_isa", "supported_cpu_isas", "use_cpu_isa"]

CPU_ISAS = ("baseline", "avx2", "avx512")
"""Every instruction set the kernels have loops for, oldest first."""


def supported_cpu_isas() -> list[str]:
    """The sets of CPU_ISAS this CPU supports, oldest first ("baseline" always; only it
    without the extension)."""
    if not extension_loaded():
        return ["baseline"]
    return list(ops.supported_cpu_isas())


def cpu_isa() -> str:
    """The set the CPU kernels use now: "baseline", "avx2" or "avx512" ("baseline" without
    the extension)."""
    if not extension_loaded():
        return "baseline"
    return ops.cpu_isa()


def set_cpu_isa(name: str) -> None:
    """Makes the CPU kernels use instruction set `name` (one of CPU_ISAS) from now on, in every
    thread. Raises RuntimeError for an unknown name or a set this CPU does not support, and
    without the extension for any set but "baseline"."""
    if not extension_loaded():
        if name != "baseline":
            raise RuntimeError(
                f"set_cpu_isa: {name!r} selects loops of drdet's extension drdet._C, which is "
                f"not loaded (only 'baseline' without it); {BUILD_HINT}"
            )
        return
    ops.set_cpu_isa(name)


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[str]:
    """Context manager: the CPU kernels use `name` inside the block (see set_cpu_isa) and the
    previous choice again after it, also when the block raises. Yields `name`."""
    previous = cpu_isa()
    set_cpu_isa(name)
    try:
        yield name
    finally:
        set_cpu_isa(previous)

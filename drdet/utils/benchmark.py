"""Timing and peak memory of a call, for the benchmarks (tools/benchmark_ops.py,
tools/benchmark_model.py): wall times with CUDA synchronised around the call, medians, the
memory a call allocates above what was allocated before it, the profiler's operator table, and
the dense tensor-core peaks of a few GPUs.

Peak memory on the CPU: torch's CPU allocator keeps no statistics, so the profiler's record of
tensor allocations and frees is replayed. Each op's own allocations (those not made by a nested
op) count from its start and its own frees from its end: an op that frees its temporaries
before returning (often inside a nested op's caller) is then charged with all of them at once,
which is what it holds at its busiest moment.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

MIB = 2**20

# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's data sheets, by a substring of
# torch.cuda.get_device_name(), most specific first: (bf16/fp16, tf32).
PEAK_TFLOPS = (
    ("H200 NVL", (835.0, 418.0)),
    ("H200", (989.4, 494.7)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100 NVL", (835.0, 418.0)),
    ("H100", (989.4, 494.7)),
    ("A100", (312.0, 156.0)),
)


def peak_tflops(device_name: str, amp: bool) -> float | None:
    """The card's dense peak (bf16/fp16 with `amp`, else TF32) in TFLOP/s, or None when the
    card is not in PEAK_TFLOPS."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks[0] if amp else peaks[1]
    return None


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def timed_call(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall time of one call of fn() in seconds, synchronising CUDA around it."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(
    fn: Callable[[], object], device: torch.device | str, repeat: int, warmup: int = 1
) -> float:
    """Median wall time of fn() in milliseconds over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed_call(fn, device) * 1e3 for _ in range(repeat))


def timed_alternating(
    fns: Mapping[str, Callable[[], object]], device: torch.device | str, warmup: int, reps: int
) -> dict[str, float]:
    """{name: median seconds} of each of `fns` ({name: fn}), called in turn: `warmup` rounds,
    then `reps` timed rounds of one call each (a change of machine load hits all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed_call(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes that one call of fn() holds at its busiest above what was allocated before it, on
    the CPU, from the profiler's record of allocations and frees (see the module's note)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events = []
    for e in prof.events():
        delta = e.self_cpu_memory_usage
        if delta:
            events.append((e.time_range.start if delta > 0 else e.time_range.end, delta))
    current = peak = 0
    for _, delta in sorted(events):
        current += delta
        peak = max(peak, current)
    return peak


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Bytes that one call of fn() allocates above what was allocated before it (activations,
    gradients, temporaries): on CUDA from the allocator's statistics, on the CPU from the
    profiler (:func:`cpu_peak_bytes`)."""
    if not _is_cuda(device):
        return cpu_peak_bytes(fn)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def print_profile(
    title: str, fn: Callable[[], object], device: torch.device | str, rows: int = 12
) -> None:
    """torch.profiler's table of the operators with the most self time in one call of fn."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if _is_cuda(device):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    key = "self_cuda_time_total" if _is_cuda(device) else "self_cpu_time_total"
    print(f"\n{title}:")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))

"""The table tools/benchmark_model.py prints and the json it writes: per row the time, peak
memory, achieved TFLOP/s (and on a card of drdet.utils.benchmark.PEAK_TFLOPS the fraction of its
dense peak) and drdet / torchvision."""

from __future__ import annotations

import json

import torch

from drdet.engine.model_benchmark.measure import Row
from drdet.engine.model_benchmark.models import BenchmarkSetup


def print_rows(
    rows: list[Row], amp: bool, peak: float | None, ratio_of: str = "drdet / torchvision"
) -> None:
    """The FLOPs line and the table; `peak`: the card's dense peak in TFLOP/s (None: no
    fraction column); `ratio_of`: what the ratio column divides."""
    work = {row.label.split(" (")[0]: row.flops for row in rows}
    trained = any(row.label.startswith("train step") for row in rows)
    print(
        "  FLOPs (tools/analyze_model.py's count): "
        + "; ".join(f"{what} {flops / 1e9:,.0f} GFLOP" for what, flops in work.items())
        + (" (a training step: 3x the forward of the batch)" if trained else "")
        + (
            f"; card's dense {'bf16/fp16' if amp else 'TF32'} peak {peak:.0f} TFLOP/s"
            if peak
            else ""
        )
    )
    width = max([44] + [len(row.label) for row in rows])
    print(
        f"  {'':<{width}} {'time':>12} {'peak memory':>15} {'TFLOP/s':>9}"
        + (f" {'of peak':>8}" if peak else "")
        + f"   ratio {ratio_of} (time)"
    )
    for label, seconds, ratio, mib, flops in rows:
        tflops = flops / seconds / 1e12
        print(
            f"  {label:<{width}} {seconds * 1e3:9.1f} ms {mib:11.0f} MiB {tflops:9.3g}"
            + (f" {tflops / peak:8.1%}" if peak else "")
            + (f"   {ratio:.2f}" if ratio else "")
        )


def write_json(
    path: str,
    setup: BenchmarkSetup,
    rows: list[Row],
    where: str,
    peak: float | None,
    peak_mib: float | None,
) -> None:
    """The figures as json: the setup, each row (ms, ratio, peak MiB, TFLOP/s, fraction of the
    peak) and the peak memory of all runs (CUDA)."""
    record = {
        "model": setup.arch,
        "torch": torch.__version__,
        "device": where,
        "batch": setup.batch,
        "size": setup.size,
        "amp": setup.amp,
        "score_thresh": setup.score_thresh,
        "warmup": setup.warmup,
        "reps": setup.reps,
        "amp_dtype": str(setup.amp_dtype),
        "peak_tflops": peak,
        "rows": [
            {
                "what": label,
                "ms": seconds * 1e3,
                "ratio": ratio,
                "peak_mib": mib,
                "tflops": flops / seconds / 1e12,
                "fraction_of_peak": (flops / seconds / 1e12 / peak if peak else None),
            }
            for label, seconds, ratio, mib, flops in rows
        ],
        "peak_memory_mib": peak_mib,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)

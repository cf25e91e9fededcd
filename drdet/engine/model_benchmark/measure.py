"""The timed parts of tools/benchmark_model.py: a training step (forward, backward, SGD step)
of each model and inference of the batch, each model's calls alternating with the other's; per
row the median time, the peak memory above what was allocated before, and the FLOPs of the work
(drdet's forward, drdet.modeling.analysis; a training step counts 3x the forward)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from drdet.engine.model_benchmark.models import (
    DETECTORS,
    BenchmarkSetup,
    detector_model,
    model_pair,
)
from drdet.layers import extension_loaded, use_extension
from drdet.modeling.analysis import forward_flops
from drdet.modeling.inference_copy import prepare_for_inference
from drdet.utils.benchmark import MIB, peak_memory_bytes, print_profile, timed_alternating


class Row(NamedTuple):
    """One line of the table: what was timed, its median seconds (per image for inference),
    drdet / torchvision (None on torchvision's rows), peak MiB, FLOPs of the work timed."""

    label: str
    seconds: float
    ratio: float | None
    peak_mib: float
    flops: float


def train_step_fn(model: nn.Module, images, targets, setup: BenchmarkSetup) -> Callable[[], None]:
    """fn() running one training step of `model` (SGD, lr 1e-4, momentum 0.9) on the batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    model.train()

    def step():
        with torch.autocast(setup.device.type, enabled=setup.amp, dtype=setup.amp_dtype):
            losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def inference_fn(model: nn.Module, images, setup: BenchmarkSetup) -> Callable[[], list]:
    """fn() running `model` (already in its inference form) on `images`, under no_grad."""

    @torch.no_grad()
    def run():
        with torch.autocast(setup.device.type, enabled=setup.amp, dtype=setup.amp_dtype):
            return model(images)

    return run


def without_extension(fn: Callable) -> Callable:
    """fn run with the pure-PyTorch forms of drdet's ops (drdet/layers/pure_ops.py, plain
    convolutions for the Winograd ones): what drdet costs where drdet._C is not built."""

    def run():
        with use_extension(False):
            return fn()

    return run


# The rows of --without-extension; none when the extension is not loaded (then every drdet row
# runs the pure forms already).
PURE = "without the extension"


def _pure_rows(setup: BenchmarkSetup) -> bool:
    return setup.without_extension and extension_loaded()


def _channels_last(model: nn.Module, setup: BenchmarkSetup) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if setup.channels_last else model


def _timed_rows(fns, setup: BenchmarkSetup) -> tuple[dict[str, float], dict[str, float]]:
    """({name: median seconds}, {name: peak MiB}) of the alternating calls of `fns`."""
    times = timed_alternating(fns, setup.device, setup.warmup, setup.reps)
    mem = {name: peak_memory_bytes(fn, setup.device) / MIB for name, fn in fns.items()}
    return times, mem


def train_rows(setup: BenchmarkSetup, images, targets) -> list[Row]:
    """Training steps of torchvision's model (focal loss) and drdet's with the focal and the
    DR loss (and without Winograd convolutions with `direct_conv`)."""
    tv, built = model_pair(setup, ("FOCAL", "DR"))
    models = {"focal": built["FOCAL"], "DR": built["DR"]}
    step_flops = 3 * setup.batch * forward_flops(models["DR"], setup.size)
    if setup.direct_conv:
        direct = model_pair(setup, ("DR",), winograd=False)[1]["DR"]
        models["DR, direct convolutions"] = direct
    models = {"torchvision": tv, **models}
    steps = {
        name: train_step_fn(_channels_last(m, setup), images, targets, setup)
        for name, m in models.items()
    }
    if _pure_rows(setup):  # models of their own: the steps update the weights
        pure = model_pair(setup, ("FOCAL", "DR"))[1]
        for name, loss in (("focal", "FOCAL"), ("DR", "DR")):
            step = train_step_fn(_channels_last(pure[loss], setup), images, targets, setup)
            steps[f"{name}, {PURE}"] = without_extension(step)
    t, mem = _timed_rows(steps, setup)
    if setup.profile:
        for name, fn in steps.items():
            print_profile(f"training step, {name}", fn, setup.device)
    return [
        Row(
            "train step, focal (torchvision)"
            if name == "torchvision"
            else f"train step, {name} (drdet)",
            t[name],
            _ratio(name, t),
            mem[name],
            step_flops,
        )
        for name in steps
    ]


def _ratio(name: str, times: dict[str, float]) -> float | None:
    """drdet's time / torchvision's; None on torchvision's own row."""
    return None if name == "torchvision" else times[name] / times["torchvision"]


def _score_difference(dets: dict[str, list]) -> float:
    """The largest score difference between drdet's and torchvision's detections, over the
    images where both return as many (> 0); NaN when there is none."""
    return max(
        (
            float((a["scores"] - b["scores"]).abs().max())
            for a, b in zip(dets["drdet"], dets["torchvision"])
            if len(a["scores"]) == len(b["scores"]) > 0
        ),
        default=float("nan"),
    )


def inference_rows(setup: BenchmarkSetup, images) -> list[Row]:
    """Inference per image of torchvision's model (eval mode) and of drdet's through
    prepare_for_inference (and as built with `unprepared`); prints the detections per image of
    each, the largest score difference and the time prepare_for_inference took."""
    tv, built = model_pair(setup)  # fresh models: training steps change the weights
    image_flops = forward_flops(built["FOCAL"], setup.size)
    tv, ours = _channels_last(tv.eval(), setup), _channels_last(built["FOCAL"], setup)
    start = time.perf_counter()
    prepared = prepare_for_inference(ours)
    prepare_s = time.perf_counter() - start
    models = {"drdet": prepared, "torchvision": tv}
    if setup.unprepared:
        models["drdet unprepared"] = ours.eval()
    fns = {name: inference_fn(m, images, setup) for name, m in models.items()}
    if _pure_rows(setup):
        fns[f"drdet, {PURE}"] = without_extension(fns["drdet"])
    dets = {name: fn() for name, fn in fns.items()}
    counts = {name: [len(d["scores"]) for d in out] for name, out in dets.items()}
    t, mem = _timed_rows(fns, setup)  # memory per batch
    labels = {
        "torchvision": "inference per image (torchvision)",
        "drdet": "inference per image (drdet)",
        "drdet unprepared": "  same, without prepare_for_inference",
        f"drdet, {PURE}": f"  same, {PURE} (pure-PyTorch ops)",
    }
    rows = [
        Row(labels[name], t[name] / setup.batch, _ratio(name, t), mem[name], image_flops)
        for name in ("torchvision", "drdet", f"drdet, {PURE}", "drdet unprepared")
        if name in t
    ]
    print(
        f"  detections per image: drdet {counts['drdet']}, torchvision "
        f"{counts['torchvision']} (largest score difference {_score_difference(dets):.1e}); "
        f"drdet's prepare_for_inference (once per model) {prepare_s * 1e3:.0f} ms"
    )
    return rows


def detector_rows(
    setup: BenchmarkSetup, images, targets, configs_dir: str, archs: list[str]
) -> list[Row]:
    """drdet's detectors `archs` (DETECTORS keys, the first the reference) side by side with
    the DR loss: a training step each and inference per image, each detector's calls alternating
    with the others'; the ratio column is each one's time / the first's."""
    torch.manual_seed(0)
    models = {
        arch: detector_model(
            setup, DETECTORS[arch], os.path.join(configs_dir, DETECTORS[arch].config), "DR"
        )
        for arch in archs
    }
    flops = {arch: forward_flops(m, setup.size) for arch, m in models.items()}
    steps = {
        a: train_step_fn(_channels_last(m, setup), images, targets, setup)
        for a, m in models.items()
    }
    t, mem = _timed_rows(steps, setup)
    rows = [
        Row(
            f"train step, DR, {a} (drdet)",
            t[a],
            t[a] / t[archs[0]],
            mem[a],
            3 * setup.batch * flops[a],
        )
        for a in archs
    ]
    prepared = {a: prepare_for_inference(m) for a, m in models.items()}
    runs = {a: inference_fn(_channels_last(m, setup), images, setup) for a, m in prepared.items()}
    t, mem = _timed_rows(runs, setup)
    return rows + [
        Row(
            f"inference per image, {a} (drdet)",
            t[a] / setup.batch,
            t[a] / t[archs[0]],
            mem[a],
            flops[a],
        )
        for a in archs
    ]

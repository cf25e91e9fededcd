"""Speed and peak memory of drdet's extension ops against their references.

    python tools/benchmark_ops.py [--quick] [--threads 2] [--device cpu|cuda|all]

- DR loss: forward + backward at 2 images x {100k, 200k} anchors x 80 classes (one group per
  image), drdet's fused op against a pure-PyTorch implementation written the way the authors'
  released code computes it (boolean masks, gathers, softmax; one loss per image, averaged);
  time, peak memory and the speed-up.
- NMS and batched NMS of 1k, 5k and 20k random boxes over 80 classes vs torchvision.ops.nms /
  torchvision.ops.batched_nms (IoU threshold 0.5): median times and the ratio drdet / torchvision
  (< 1 means drdet is faster).
- Sigmoid focal loss forward + backward on 2 images x 100k anchors x 80 classes vs torchvision's
  Python sigmoid_focal_loss.
- On CUDA (`--device cuda`): the DR loss also at 16 x 200k x 80 with image grouping and with one
  group; NMS also at 100k boxes; each op's time as a fraction of its memory floor (the bytes it
  must move / the card's bandwidth / the time: 1.0 would be the bandwidth limit). The bandwidth is
  read from the device properties (2 x memory clock x bus width) or given with --bandwidth-gbs;
  without either, the H200's 4800 GB/s is assumed (the line printed says which). Both versions of
  the CUDA kernels are timed (drdet.layers.set_cuda_kernels: "v1", the verified default, and
  "v2", not yet run on a GPU).
- 3x3 convolution forward + backward on the CPU (`--ops winograd`, not in the default set):
  drdet's Winograd F(4x4, 3x3) (drdet/layers/winograd.py, what MODEL.CPU_WINOGRAD uses in
  training) vs torch's direct convolution (oneDNN) on the shapes of a RetinaNet R-50-FPN
  training step at 512 x 512, batch 2: the head's layers on P3 (64 x 64), on all five levels
  in one call, the class predictor, a ResNet res3 layer; then layers that WinogradConv2d's
  limits leave to the direct convolution (few tiles, few channels), timed on both paths.
"""

import argparse
import functools
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from drdet.layers import (  # noqa: E402
    batched_nms,
    dr_loss,
    get_cuda_kernels,
    nms,
    set_cuda_kernels,
    sigmoid_focal_loss,
)
from drdet.layers.winograd import conv3x3_levels  # noqa: E402
from drdet.utils.errors import run_main  # noqa: E402

NEG_LAMBDA = 0.1 / math.log(3.5)
H200_BANDWIDTH_GBS = 4800.0
CUDA_VERSIONS = ("v1", "v2")  # what drdet.layers.set_cuda_kernels accepts


def card_bandwidth(args):
    """(bytes per second of the GPU's memory, where the figure comes from)."""
    if args.bandwidth_gbs is not None:
        return args.bandwidth_gbs * 1e9, "--bandwidth-gbs"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    bandwidth = 2.0 * clock_khz * 1e3 * bus_bits / 8  # double data rate
    if 100e9 <= bandwidth <= 50e12:
        return bandwidth, (f"device properties: 2 x {clock_khz / 1e3:.0f} MHz x {bus_bits}-bit bus")
    return H200_BANDWIDTH_GBS * 1e9, (
        "assumed: the H200's 4800 GB/s (the device properties "
        "give no memory clock; set --bandwidth-gbs)"
    )


def floor_fraction(num_bytes, seconds, args, device):
    """Fraction of the memory floor reached on CUDA: num_bytes / bandwidth / seconds, as text."""
    if args.bandwidth is None or str(device) != "cuda":
        return ""
    return f"floor {num_bytes / args.bandwidth / seconds:6.1%}"


def cuda_versions(device):
    """The CUDA kernel versions to time on `device` (one pass, version unchanged, on the CPU)."""
    return CUDA_VERSIONS if str(device) == "cuda" else (None,)


def with_version(version, fn):
    """fn() with the CUDA kernels of `version` (None: as they are)."""
    if version is None:
        return fn()
    previous = set_cuda_kernels(version)
    try:
        return fn()
    finally:
        set_cuda_kernels(previous)


def masked_dr_loss(
    logits,
    labels,
    group_ids,
    num_groups,
    pos_lambda=1.0,
    neg_lambda=NEG_LAMBDA,
    L=6.0,
    margin=0.5,
    tau=4.0,
):
    """The DR loss computed like the released code: (N, C) masks, gathers and a softmax."""
    classes = torch.arange(1, logits.shape[1] + 1, device=logits.device)
    losses = []
    for g in range(num_groups):
        rows = group_ids == g
        x, t = logits[rows], labels[rows].unsqueeze(1)
        pos_prob = x[t == classes].sigmoid()
        neg_prob = x[(t != classes) & (t >= 0)].sigmoid()
        neg_dist = (F.softmax(neg_prob / neg_lambda, dim=0) * neg_prob).sum()
        if pos_prob.numel() > 0:
            pos_dist = (F.softmax(-pos_prob / pos_lambda, dim=0) * pos_prob).sum()
        else:
            pos_dist = 1.0
        losses.append(tau * F.softplus(L * (neg_dist - pos_dist + margin)) / L)
    return torch.stack(losses).mean()


def _fused(logits, labels, group_ids, num_groups):
    return dr_loss(logits, labels, group_ids, num_groups=num_groups)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_fwd_bwd(fn, logits, labels, gids, groups, device, reps):
    """Median seconds of forward + backward (after one warm-up run), then, in a separate run,
    the peak memory in bytes allocated above the inputs (gradient included)."""
    times = []
    for i in range(reps + 1):
        x = logits.detach().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        fn(x, labels, gids, groups).backward()
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
        del x
    times.sort()
    x = logits.detach().requires_grad_(True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(x, labels, gids, groups).backward()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        _cpu_peak_start()
        fn(x, labels, gids, groups).backward()
        peak = _cpu_peak_stop()
    return times[len(times) // 2], peak


# CPU peak memory: torch's CPU allocator keeps no statistics, so we replay the profiler's
# record of tensor allocations and frees. Each op's own allocations (those not made by a nested
# op) count from its start and its own frees from its end: an op that frees its temporaries
# before returning (often inside a nested op's caller) is then charged with all of them at once,
# which is what it holds at its busiest moment.
_cpu_prof = None


def _cpu_peak_start():
    global _cpu_prof
    _cpu_prof = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    )
    _cpu_prof.__enter__()


def _cpu_peak_stop():
    _cpu_prof.__exit__(None, None, None)
    events = []
    for e in _cpu_prof.events():
        delta = e.self_cpu_memory_usage
        if delta:
            events.append((e.time_range.start if delta > 0 else e.time_range.end, delta))
    cur = peak = 0
    for _, delta in sorted(events):
        cur += delta
        peak = max(peak, cur)
    return peak


def bench_dr_loss(device, args):
    """Prints the DR loss table for one device."""
    reps = 1 if args.quick else args.reps
    print(
        f"\nDR loss forward+backward on {device} ({torch.get_num_threads()} threads)"
        if device == "cpu"
        else f"\nDR loss forward+backward on {torch.cuda.get_device_name()}"
    )
    print(
        f"{'images x anchors x classes':>28} {'impl':>8} {'time ms':>9} {'peak MiB':>9} "
        f"{'speed-up':>9}"
    )
    if device == "cpu":
        sizes = [(2, 100_000, 80, "image")] + ([] if args.quick else [(2, 200_000, 80, "image")])
    else:  # the shapes of issue 15
        sizes = [
            (2, 200_000, 80, "image"),
            (16, 200_000, 80, "image"),
            (16, 200_000, 80, "one group"),
        ]
    gen = torch.Generator().manual_seed(0)
    for images, anchors, classes, grouping in sizes:
        n = images * anchors
        logits = torch.randn(n, classes, generator=gen).to(device)
        labels = torch.zeros(n, dtype=torch.long)
        labels[torch.rand(n, generator=gen) < 0.01] = -1
        fg = torch.rand(n, generator=gen) < 0.01
        labels[fg] = torch.randint(1, classes + 1, (int(fg.sum()),), generator=gen)
        labels = labels.to(device)
        groups = images if grouping == "image" else 1
        gids = torch.arange(images).repeat_interleave(anchors).to(device) % groups
        # the floor: read the logits, labels and group ids in the forward and again in the
        # backward, write the gradient
        floor_bytes = 3 * logits.numel() * logits.element_size() + 2 * n * (8 + 8)
        t_ref, m_ref = _time_fwd_bwd(masked_dr_loss, logits, labels, gids, groups, device, reps)
        shape = f"{images} x {anchors // 1000}k x {classes}" + (
            "" if grouping == "image" else ", 1 group"
        )
        mib = 1 / 2**20
        print(f"{shape:>28} {'masked':>8} {t_ref * 1e3:9.1f} {m_ref * mib:9.1f}")
        for version in cuda_versions(device):
            t_drd, m_drd = with_version(
                version,
                functools.partial(
                    _time_fwd_bwd, _fused, logits, labels, gids, groups, device, reps
                ),
            )
            impl = "drdet" if version is None else f"drdet {version}"
            print(
                f"{shape:>28} {impl:>8} {t_drd * 1e3:9.2f} {m_drd * mib:9.1f} "
                f"{t_ref / t_drd:8.1f}x {floor_fraction(floor_bytes, t_drd, args, device)}"
            )
        print(
            f"{'':>28} (logits: {logits.numel() * logits.element_size() * mib:.1f} MiB; "
            f"the gradient is one more)"
        )


def timed_call(fn, device) -> float:
    """Wall time of one call of fn() in seconds, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(fn, device, repeat, warmup=1):
    """Median wall time of fn() in milliseconds, synchronising CUDA around each call."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed_call(fn, device) * 1e3 for _ in range(repeat))


def report(op, size, ours_ms, ref_ms, ref_name, floor=""):
    print(
        f"  {op:<14} {size:<42} drdet {ours_ms:9.3f} ms   {ref_name} {ref_ms:9.3f} ms   "
        f"ratio {ours_ms / ref_ms:5.2f}" + (f"   {floor}" if floor else "")
    )


def random_boxes(n, device, image_size=800.0, max_size=200.0):
    """(n, 4) float32 boxes (x1, y1, x2, y2) in an image_size square, sides below max_size."""
    xy = torch.rand(n, 2, device=device) * image_size
    wh = torch.rand(n, 2, device=device) * max_size
    return torch.cat([xy, xy + wh], 1)


def bench_nms(device, args):
    """nms and batched_nms (80 classes, IoU 0.5) vs torchvision, 1k / 5k / 20k boxes."""
    print(f"NMS on {device} (IoU 0.5, 80 classes, random boxes in an 800 x 800 image)")
    repeat = 3 if args.quick and device.type == "cpu" else args.repeat
    sizes = (1000, 5000, 20000) + ((100_000,) if device.type == "cuda" else ())
    for n in sizes:
        torch.manual_seed(n)
        boxes = random_boxes(n, device)
        scores = torch.rand(n, device=device)
        class_ids = torch.randint(0, 80, (n,), device=device)
        floor_bytes = n * (16 + 4 + 8)  # read boxes, scores (and class ids) once
        single = (boxes, scores, 0.5)
        batched = (boxes, scores, class_ids, 0.5)
        ref = measure(functools.partial(torchvision.ops.nms, *single), device, repeat)
        ref_batched = measure(
            functools.partial(torchvision.ops.batched_nms, *batched), device, repeat
        )
        for version in cuda_versions(device):
            label = f"{n} boxes" + ("" if version is None else f", kernels {version}")
            ours = with_version(
                version, functools.partial(measure, functools.partial(nms, *single), device, repeat)
            )
            report(
                "nms",
                label,
                ours,
                ref,
                "torchvision",
                floor_fraction(floor_bytes, ours / 1e3, args, device),
            )
            ours = with_version(
                version,
                functools.partial(
                    measure, functools.partial(batched_nms, *batched), device, repeat
                ),
            )
            report(
                "batched_nms",
                label,
                ours,
                ref_batched,
                "torchvision",
                floor_fraction(floor_bytes, ours / 1e3, args, device),
            )


def bench_focal(device, args):
    """Sigmoid focal loss forward + backward vs torchvision's Python implementation."""
    images, anchors, classes = 2, (20_000 if args.quick and device.type == "cpu" else 100_000), 80
    n = images * anchors
    print(
        f"Sigmoid focal loss fwd+bwd on {device} ({images} x {anchors} anchors x {classes} "
        f"classes, float32)"
    )
    torch.manual_seed(0)
    logits = torch.randn(n, classes, device=device, requires_grad=True)
    # RetinaNet-like labels: ~1% foreground, ~10% ignored, the rest background.
    u = torch.rand(n, device=device)
    labels = torch.where(
        u < 0.01, torch.randint(1, classes + 1, (n,), device=device), torch.where(u < 0.11, -1, 0)
    )
    targets = torch.zeros(n, classes + 1, device=device)
    targets[torch.arange(n, device=device), labels.clamp(min=0)] = 1.0
    targets = targets[:, 1:].contiguous()
    valid = (labels >= 0).float()[:, None]

    def ours():
        logits.grad = None
        sigmoid_focal_loss(logits, labels).backward()

    def reference():
        logits.grad = None
        per_entry = torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="none")
        (per_entry * valid).sum().backward()

    repeat = 3 if device.type == "cpu" else args.repeat
    ours_ms = measure(ours, device, repeat)
    floor_bytes = 3 * logits.numel() * logits.element_size() + 2 * n * 8
    report(
        "focal fwd+bwd",
        f"{images}x{anchors}x{classes}",
        ours_ms,
        measure(reference, device, repeat),
        "torchvision",
        floor_fraction(floor_bytes, ours_ms / 1e3, args, device),
    )


def bench_winograd(device, args):
    """3x3 convolutions (stride 1, padding 1) forward + backward: Winograd vs direct."""
    if device.type != "cpu":
        print("  (CPU only: on CUDA drdet uses cuDNN's convolutions)")
        return
    p3 = [(64, 64)]
    levels = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    # (label, batch, input channels, output channels, map sizes)
    cases = [
        ("head layer, P3", 2, 256, 256, p3),
        ("head layer, P3-P7", 2, 256, 256, levels),
        ("class predictor, P3-P7", 2, 256, 720, levels),
        ("res3 layer", 2, 128, 128, p3),
    ]
    # Layers that WinogradConv2d's limits (MIN_TILES, MIN_IN_CHANNELS, MIN_OUT_CHANNELS in
    # drdet/layers/winograd.py) leave to the direct convolution, timed on both paths anyway.
    below_limits = [
        ("P5 alone: 32 tiles", 2, 256, 256, [(16, 16)]),
        ("64 channels, batch 4", 4, 64, 64, [(64, 64)]),
        ("box predictor, P3", 2, 256, 36, p3),
        ("res5 layer: 32 tiles", 2, 512, 512, [(16, 16)]),
    ]
    cases = cases[:1] if args.quick else cases + below_limits
    torch.manual_seed(0)
    for label, n, c_in, c_out, sizes in cases:
        # channels_last maps and gradients for both (the layout the Winograd path leaves in the
        # model; oneDNN's direct convolution takes it without a copy too)
        cl = torch.channels_last
        xs = [torch.randn(n, c_in, h, w).to(memory_format=cl).requires_grad_() for h, w in sizes]
        weight = (torch.randn(c_out, c_in, 3, 3) * 0.02).requires_grad_()
        grads = [torch.randn(n, c_out, h, w).to(memory_format=cl) for h, w in sizes]

        def run(fn, grads=grads):
            outs = fn()
            torch.autograd.backward(outs, grads)

        def ours_call(xs=xs, weight=weight):
            return conv3x3_levels(xs, weight)

        def ref_call(xs=xs, weight=weight):
            return [F.conv2d(x, weight, padding=1) for x in xs]

        ours = measure(lambda: run(ours_call), device, args.reps + 2)
        ref = measure(lambda: run(ref_call), device, args.reps + 2)
        report("conv3x3 f+b", f"{label} {c_in}->{c_out}", ours, ref, "direct")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="all",
        choices=["all", "cpu", "cuda"],
        help="where to run ('all': CPU, and CUDA when a GPU is visible)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions and the smallest sizes on the CPU"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed DR-loss repetitions (median)")
    parser.add_argument("--repeat", type=int, default=10, help="timed NMS calls (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument(
        "--ops",
        default="dr,nms,focal",
        help="comma-separated subset of dr,nms,focal,winograd to run",
    )
    parser.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="the GPU's memory bandwidth in GB/s for the floor fractions "
        "(default: from the device properties, else the H200's "
        f"{H200_BANDWIDTH_GBS:.0f})",
    )
    args = parser.parse_args(argv)
    args.bandwidth = None
    torch.set_num_threads(args.threads)
    ops = set(args.ops.split(","))
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA GPU is visible")
        print("no CUDA GPU visible: CPU only")
        devices.remove("cuda")
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "")
    )
    if "cuda" in devices:
        args.bandwidth, source = card_bandwidth(args)
        print(
            f"memory floor: {args.bandwidth / 1e9:.0f} GB/s ({source}); CUDA kernels timed: "
            f"{', '.join(CUDA_VERSIONS)} (in use: {get_cuda_kernels()})"
        )
    for name in devices:
        if "dr" in ops:
            bench_dr_loss(name, args)
        if "nms" in ops:
            print(f"\nNMS on {name}")
            bench_nms(torch.device(name), args)
        if "focal" in ops:
            print(f"\nSigmoid focal loss on {name}")
            bench_focal(torch.device(name), args)
        if "winograd" in ops:
            print(f"\n3x3 convolution, forward + backward, on {name}")
            bench_winograd(torch.device(name), args)


if __name__ == "__main__":
    sys.exit(run_main(main))

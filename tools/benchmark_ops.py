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

import functools
import math
import sys

import torch
import torch.nn.functional as F
import torchvision

from drdet.engine.defaults import tool_parser
from drdet.layers import (
    batched_nms,
    dr_loss,
    get_cuda_kernels,
    nms,
    set_cuda_kernels,
    sigmoid_focal_loss,
)
from drdet.layers.winograd import conv3x3_levels
from drdet.utils.benchmark import measure, peak_memory_bytes, timed_call
from drdet.utils.errors import UserValueError, run_main

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


def _time_fwd_bwd(fn, logits, labels, gids, groups, device, reps):
    """Median seconds of forward + backward (after one warm-up run), then, in a separate run,
    the peak memory in bytes allocated above the inputs (gradient included)."""

    def fwd_bwd():
        x = logits.detach().requires_grad_(True)
        return lambda: fn(x, labels, gids, groups).backward()

    timed_call(fwd_bwd(), device)  # warm-up
    times = sorted(timed_call(fwd_bwd(), device) for _ in range(reps))
    return times[len(times) // 2], peak_memory_bytes(fwd_bwd(), device)


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


def parse_args(argv=None):
    parser = tool_parser(__doc__)
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
    return args


def devices_to_run(args):
    """The device names of --device, without CUDA where no GPU is visible (an error when
    --device cuda asked for it)."""
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise UserValueError("--device cuda: no CUDA GPU is visible")
        print("no CUDA GPU visible: CPU only")
        devices.remove("cuda")
    return devices


# --ops name: (title printed before it, or None; benchmark; takes a torch.device, not a name)
BENCHMARKS = {
    "dr": (None, bench_dr_loss, False),
    "nms": ("NMS", bench_nms, True),
    "focal": ("Sigmoid focal loss", bench_focal, True),
    "winograd": ("3x3 convolution, forward + backward,", bench_winograd, True),
}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ops = set(args.ops.split(","))
    devices = devices_to_run(args)
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
        for op, (title, bench, takes_device) in BENCHMARKS.items():
            if op in ops:
                if title:
                    print(f"\n{title} on {name}")
                bench(torch.device(name) if takes_device else name, args)


if __name__ == "__main__":
    sys.exit(run_main(main))

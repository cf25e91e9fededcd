"""Benchmark drdet's extension ops against their torchvision counterparts.

    python tools/benchmark_ops.py                  # CPU, and CUDA when a GPU is visible
    python tools/benchmark_ops.py --device cpu --quick

Prints, per op and size, the median wall time of drdet's op and of the reference and their ratio
(drdet / reference; < 1 means drdet is faster):
- NMS and batched NMS of 1k, 5k and 20k random boxes over 80 classes vs torchvision.ops.nms /
  torchvision.ops.batched_nms (IoU threshold 0.5);
- sigmoid focal loss forward + backward on 2 images x 100k anchors x 80 classes vs torchvision's
  Python sigmoid_focal_loss (one-hot targets and ignore mask built outside the timed region).
"""
import argparse
import statistics
import time

import torch
import torchvision

from drdet.layers import batched_nms, nms, sigmoid_focal_loss


def measure(fn, device, repeat, warmup=1):
    """Median wall time of fn() in milliseconds, synchronising CUDA around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def report(op, size, ours_ms, ref_ms, ref_name):
    print(f"  {op:<14} {size:<18} drdet {ours_ms:9.3f} ms   {ref_name} {ref_ms:9.3f} ms   "
          f"ratio {ours_ms / ref_ms:5.2f}")


def random_boxes(n, device, image_size=800.0, max_size=200.0):
    """(n, 4) float32 boxes (x1, y1, x2, y2) in an image_size square, sides below max_size."""
    xy = torch.rand(n, 2, device=device) * image_size
    wh = torch.rand(n, 2, device=device) * max_size
    return torch.cat([xy, xy + wh], 1)


def bench_nms(device, args):
    """nms and batched_nms (80 classes, IoU 0.5) vs torchvision, 1k / 5k / 20k boxes."""
    print(f"NMS on {device} (IoU 0.5, 80 classes, random boxes in an 800 x 800 image)")
    repeat = 3 if args.quick and device.type == "cpu" else args.repeat
    for n in (1000, 5000, 20000):
        torch.manual_seed(n)
        boxes = random_boxes(n, device)
        scores = torch.rand(n, device=device)
        class_ids = torch.randint(0, 80, (n,), device=device)
        ours = measure(lambda: nms(boxes, scores, 0.5), device, repeat)
        ref = measure(lambda: torchvision.ops.nms(boxes, scores, 0.5), device, repeat)
        report("nms", f"{n} boxes", ours, ref, "torchvision")
        ours = measure(lambda: batched_nms(boxes, scores, class_ids, 0.5), device, repeat)
        ref = measure(lambda: torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5),
                      device, repeat)
        report("batched_nms", f"{n} boxes", ours, ref, "torchvision")


def bench_focal(device, args):
    """Sigmoid focal loss forward + backward vs torchvision's Python implementation."""
    images, anchors, classes = 2, (20_000 if args.quick and device.type == "cpu" else 100_000), 80
    n = images * anchors
    print(f"Sigmoid focal loss fwd+bwd on {device} ({images} x {anchors} anchors x {classes} "
          f"classes, float32)")
    torch.manual_seed(0)
    logits = torch.randn(n, classes, device=device, requires_grad=True)
    # RetinaNet-like labels: ~1% foreground, ~10% ignored, the rest background.
    u = torch.rand(n, device=device)
    labels = torch.where(u < 0.01, torch.randint(1, classes + 1, (n,), device=device),
                         torch.where(u < 0.11, -1, 0))
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
    report("focal fwd+bwd", f"{images}x{anchors}x{classes}", measure(ours, device, repeat),
           measure(reference, device, repeat), "torchvision")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="where to run ('all': CPU, and CUDA when a GPU is visible)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and a smaller focal-loss batch on the CPU")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per measurement")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA GPU is visible")
        devices.remove("cuda")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    for name in devices:
        device = torch.device(name)
        bench_nms(device, args)
        bench_focal(device, args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""drdet's RetinaNet against torchvision's `retinanet_resnet50_fpn`, same architecture, same
images, same batch, on one machine: a training step (forward, backward, SGD step) with focal
loss and with DR loss, and inference per image including post-processing.

    python tools/benchmark_model.py --device cpu                  # batch 2 at 512 x 512
    python tools/benchmark_model.py --device cuda --amp           # batch 8 at 800 x 1333

Both models: ResNet-50-FPN, FrozenBatchNorm, stem and res2 frozen, stride in the 3x3 conv, P6
from P5, 4-conv heads, 80 foreground classes, random weights (seeded); torchvision's internal
transform is set to the benchmark's image size so that it does not resize, and drdet gets the
images at that size. Times are medians over --reps runs after --warmup runs; the last column is
drdet / torchvision (< 1: drdet is faster).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmark_ops import measure  # noqa: E402  (tools/ is on sys.path when run as a script)
from drdet.engine.launch import load_config  # noqa: E402
from drdet.modeling import build_detector  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "retinanet", "retinanet_R-50-FPN_1x.yaml")


def drdet_model(device, loss_type, size):
    cfg = load_config(CONFIG, [
        "MODEL.DEVICE", device.type, "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "MODEL.RETINANET.USE_C5", "False", "MODEL.RETINANET.LOSS_TYPE", loss_type,
        "INPUT.MIN_SIZE_TEST", str(min(size)), "INPUT.MAX_SIZE_TEST", str(max(size))])
    return build_detector(cfg).to(device)


def torchvision_model(device, size):
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                   min_size=min(size), max_size=max(size))
    return model.to(device)


def batch(device, n, size, num_boxes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=gen).to(device))
        xy = torch.rand(num_boxes, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(num_boxes, 2, generator=gen) * torch.tensor([w * 0.2, h * 0.2])
        boxes = torch.cat([xy, xy + wh], 1).to(device)
        labels = torch.randint(1, 81, (num_boxes,), generator=gen).to(device)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def timed(fn, device, warmup, reps):
    """Median seconds of fn() over `reps` calls after `warmup` calls (CUDA synchronised)."""
    return measure(fn, device, reps, warmup) / 1e3


def train_step_fn(model, images, targets, device, amp, scale_images=1.0):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    images = [img * scale_images for img in images]
    model.train()

    def step():
        with torch.autocast(device.type, enabled=amp):
            losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def inference_fn(model, images, device, amp, scale_images=1.0):
    images = [img * scale_images for img in images]
    model.eval()

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, enabled=amp):
            model(images)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 8 on CUDA")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default: 512 512 on CPU, 800 1344 on CUDA (a multiple of 32)")
    parser.add_argument("--amp", action="store_true", help="torch.autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last models")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.batch or (2 if device.type == "cpu" else 8)
    size = tuple(args.size or ((512, 512) if device.type == "cpu" else (800, 1344)))
    torch.manual_seed(0)
    images, targets = batch(device, n, size)
    where = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}; {where}; batch {n} at {size[0]}x{size[1]}; amp {args.amp}")

    tv = torchvision_model(device, size)
    models = {"focal": drdet_model(device, "FOCAL", size), "DR": drdet_model(device, "DR", size)}
    if args.channels_last:
        tv = tv.to(memory_format=torch.channels_last)
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
    # drdet takes BGR 0-255 images (its default PIXEL_MEAN/STD), torchvision RGB 0-1: same tensor
    # scaled, so both see inputs of the right range.
    t_tv = timed(train_step_fn(tv, images, targets, device, args.amp), device, args.warmup,
                 args.reps)
    rows = [("train step, focal (torchvision)", t_tv, None)]
    for name, model in models.items():
        t = timed(train_step_fn(model, images, targets, device, args.amp, 255.0), device,
                  args.warmup, args.reps)
        rows.append((f"train step, {name} (drdet)", t, t / t_tv))
    t_tv_inf = timed(inference_fn(tv, images, device, args.amp), device, args.warmup, args.reps)
    rows.append(("inference per image (torchvision)", t_tv_inf / n, None))
    t_inf = timed(inference_fn(models["focal"], images, device, args.amp, 255.0), device,
                  args.warmup, args.reps)
    rows.append(("inference per image (drdet)", t_inf / n, t_inf / t_tv_inf))
    for label, seconds, ratio in rows:
        print(f"  {label:<36} {seconds * 1e3:9.1f} ms" + (f"   ratio {ratio:.2f}" if ratio else ""))
    if device.type == "cuda":
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (all runs)")


if __name__ == "__main__":
    main()

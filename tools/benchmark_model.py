#!/usr/bin/env python
"""drdet's RetinaNet against torchvision's `retinanet_resnet50_fpn`, same architecture, same
images, same batch, on one machine: a training step (forward, backward, SGD step) with focal
loss and with DR loss, and inference per image including post-processing.

    python tools/benchmark_model.py --device cpu                  # batch 2 at 512 x 512
    python tools/benchmark_model.py --device cpu --parts inference --reps 11
    python tools/benchmark_model.py --device cuda --amp           # batch 8 at 800 x 1344

Both models: ResNet-50-FPN, FrozenBatchNorm, stem and res2 frozen, stride in the 3x3 conv, P6
from P5, 4-conv heads, 80 object classes (torchvision: num_classes=81, its convention of an
unused background index 0), random weights (seeded); torchvision's internal transform is set to
the benchmark's image size so that it does not resize, and drdet gets the images at that size.

Inference runs each model the way its users run it: torchvision's model in eval mode, drdet's
through `prepare_for_inference` (what the Predictor and tools/test_net.py's test loop do once
per model: a copy with FrozenBN folded into the convolutions, channels_last on the CPU; its cost
is printed apart), both under torch.no_grad(), with the same post-processing parameters: score
threshold --score-thresh, 1000 candidates per level, class-wise NMS at 0.5, 100 detections per
image. With these random weights (an untrained backbone, FrozenBN at identity) the scores
spread widely: at the default 0.05 about half of all anchor x class entries pass, every level
gives its 1000 candidates per image, and both models return 100 detections per image (printed),
so the post-processing does its full work.

Times are medians over --reps runs after --warmup runs; drdet's and torchvision's runs alternate
so that a change of machine load hits both. The last column is drdet / torchvision (< 1: drdet
is faster). --json writes the figures to a file.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmark_ops import measure  # noqa: E402  (tools/ is on sys.path when run as a script)
from drdet.engine.launch import load_config  # noqa: E402
from drdet.modeling import build_detector  # noqa: E402
from drdet.modeling.detector import prepare_for_inference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "retinanet", "retinanet_R-50-FPN_1x.yaml")


# Post-processing parameters shared by both models (drdet's config defaults).
PRE_NMS_TOP_N, NMS_THRESH, DETECTIONS_PER_IMG = 1000, 0.5, 100


def drdet_model(device, loss_type, size, score_thresh=0.05):
    cfg = load_config(CONFIG, [
        "MODEL.DEVICE", device.type, "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "MODEL.RETINANET.USE_C5", "False", "MODEL.RETINANET.LOSS_TYPE", loss_type,
        "MODEL.RETINANET.INFERENCE_TH", str(score_thresh),
        "MODEL.RETINANET.PRE_NMS_TOP_N", str(PRE_NMS_TOP_N),
        "MODEL.RETINANET.NMS_TH", str(NMS_THRESH),
        "TEST.DETECTIONS_PER_IMG", str(DETECTIONS_PER_IMG),
        "INPUT.MIN_SIZE_TEST", str(min(size)), "INPUT.MAX_SIZE_TEST", str(max(size))])
    return build_detector(cfg).to(device)


def torchvision_model(device, size, score_thresh=0.05):
    from torchvision.models.detection import retinanet_resnet50_fpn

    # num_classes counts torchvision's background index 0 (never predicted by a sigmoid head,
    # but a column of the classifier): 80 object classes -> 81.
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81,
                                   min_size=min(size), max_size=max(size),
                                   score_thresh=score_thresh, nms_thresh=NMS_THRESH,
                                   detections_per_img=DETECTIONS_PER_IMG,
                                   topk_candidates=PRE_NMS_TOP_N)
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


def timed_alternating(fns, device, warmup, reps):
    """{name: median seconds} of each of `fns` ({name: fn}), called in turn: warmup rounds,
    then `reps` timed rounds of one call each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
    """fn() running `model` (already in its inference form) on `images`, under no_grad."""
    images = [img * scale_images for img in images]

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, enabled=amp):
            return model(images)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 8 on CUDA")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default: 512 512 on CPU, 800 1344 on CUDA (a multiple of 32)")
    parser.add_argument("--amp", action="store_true", help="torch.autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last for both models' training step and torchvision's "
                             "inference too (drdet's inference copy is channels_last on the CPU "
                             "anyway)")
    parser.add_argument("--parts", default="train,inference",
                        help="comma-separated subset of train,inference")
    parser.add_argument("--score-thresh", type=float, default=0.05,
                        help="inference score threshold of both models (default 0.05)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    parts = set(args.parts.split(","))
    if not parts or parts - {"train", "inference"}:
        raise SystemExit(f"--parts: a subset of train,inference, got {args.parts!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.batch or (2 if device.type == "cpu" else 8)
    size = tuple(args.size or ((512, 512) if device.type == "cpu" else (800, 1344)))
    torch.manual_seed(0)
    images, targets = batch(device, n, size)
    where = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}; {where}; batch {n} at {size[0]}x{size[1]}; amp {args.amp}; "
          f"score threshold {args.score_thresh}")

    tv = torchvision_model(device, size, args.score_thresh)
    models = {"focal": drdet_model(device, "FOCAL", size, args.score_thresh)}
    if "train" in parts:
        models["DR"] = drdet_model(device, "DR", size, args.score_thresh)
    if args.channels_last:
        tv = tv.to(memory_format=torch.channels_last)
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
    # drdet takes BGR 0-255 images (its default PIXEL_MEAN/STD), torchvision RGB 0-1: same tensor
    # scaled, so both see inputs of the right range.
    rows = []  # (label, seconds, ratio or None)
    if "train" in parts:
        t_tv = timed(train_step_fn(tv, images, targets, device, args.amp), device, args.warmup,
                     args.reps)
        rows.append(("train step, focal (torchvision)", t_tv, None))
        for name in ("focal", "DR"):
            t = timed(train_step_fn(models[name], images, targets, device, args.amp, 255.0),
                      device, args.warmup, args.reps)
            rows.append((f"train step, {name} (drdet)", t, t / t_tv))
    if "inference" in parts:
        start = time.perf_counter()
        drdet_inference = prepare_for_inference(models["focal"])
        prepare_s = time.perf_counter() - start
        tv.eval()
        fns = {"drdet": inference_fn(drdet_inference, images, device, args.amp, 255.0),
               "torchvision": inference_fn(tv, images, device, args.amp)}
        counts = {name: [len(d["scores"]) for d in fn()] for name, fn in fns.items()}
        t = timed_alternating(fns, device, args.warmup, args.reps)
        rows.append(("inference per image (torchvision)", t["torchvision"] / n, None))
        rows.append(("inference per image (drdet)", t["drdet"] / n,
                     t["drdet"] / t["torchvision"]))
        print(f"  detections per image: drdet {counts['drdet']}, torchvision "
              f"{counts['torchvision']}; drdet's prepare_for_inference (once per model) "
              f"{prepare_s * 1e3:.0f} ms")
    for label, seconds, ratio in rows:
        print(f"  {label:<36} {seconds * 1e3:9.1f} ms" + (f"   ratio {ratio:.2f}" if ratio else ""))
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"  peak memory {peak:.0f} MiB (all runs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": where, "batch": n, "size": size,
                       "amp": args.amp, "score_thresh": args.score_thresh,
                       "warmup": args.warmup, "reps": args.reps,
                       "rows": [{"what": label, "ms": seconds * 1e3, "ratio": ratio}
                                for label, seconds, ratio in rows],
                       "peak_memory_mib": peak}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

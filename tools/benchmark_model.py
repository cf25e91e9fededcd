#!/usr/bin/env python
"""drdet's RetinaNet against torchvision's `retinanet_resnet50_fpn` (or, with --model fcos,
drdet's FCOS against torchvision's `fcos_resnet50_fpn`), same architecture, same images, same
batch, on one machine: a training step (forward, backward, SGD step) with focal loss and with DR
loss, and inference per image including post-processing.

    python tools/benchmark_model.py --device cpu                  # batch 2 at 512 x 512
    python tools/benchmark_model.py --device cpu --parts inference --reps 11
    python tools/benchmark_model.py --device cuda --amp           # batch 8 at 800 x 1344
    python tools/benchmark_model.py --device cpu --model fcos     # FCOS, batch 2 at 512 x 512

FCOS: configs/torchvision/fcos_resnet50_fpn_torchvision.yaml and the converter of
drdet/checkpoint/fcos_conversion.py; torchvision's FCOS built as fcos_resnet50_fpn
builds it around pretrained weights (FrozenBatchNorm2d, trainable_layers=3, GroupNorm head);
NMS at 0.6 (FCOS's) for both, the other parameters as below. drdet's FCOS trains with the DR
loss too (MODEL.FCOS.LOSS_TYPE); torchvision's with the focal loss only.

Both models: ResNet-50-FPN, FrozenBatchNorm, stem and res2 frozen, stride in the 3x3 conv, P6
from P5, 4-conv heads, 80 object classes, and the same random weights (seeded). torchvision's
model is built the way `retinanet_resnet50_fpn(weights=...)` builds it for users who fine-tune
pretrained weights (FrozenBatchNorm2d, trainable_layers=3; with weights=None it would switch to
trainable BatchNorm2d and train every layer), num_classes=81 (its convention: an unused index 0).
drdet's model uses configs/torchvision/retinanet_resnet50_fpn_torchvision.yaml (torchvision's
input normalisation, box coding and head layout) and loads torchvision's initial weights through
drdet's converter (convert_torchvision_retinanet, class columns 1..80), so both compute the same
features from the same RGB 0-1 images. torchvision's internal transform is set to the
benchmark's image size, so that its resize keeps the size (it still interpolates, ~1 ms).

The training step runs each model as its users train it: torchvision's model as built,
drdet's as its config builds it, which on the CPU includes MODEL.CPU_WINOGRAD (3x3 stride-1
convolutions with enough tiles by Winograd F(4x4, 3x3), drdet/layers/winograd.py; --direct-conv
also times drdet without it).

Inference runs each model the way its users run it: torchvision's model in eval mode, drdet's
through `prepare_for_inference` (what the Predictor and tools/test_net.py's test loop do once
per model: a copy with FrozenBN folded into the convolutions and, on the CPU, channels_last
weights packed once into oneDNN's layout; its cost is printed apart), both under
torch.no_grad(), with the same post-processing parameters: score threshold --score-thresh, 1000
candidates per level, class-wise NMS at 0.5, 100 detections per image. The number of
detections per image each model returns is printed: with the same weights both see the same
scores, so their post-processing does the same work.

Peak memory: what one training step (one inference call of the whole batch) allocates above
what was allocated before it, its activations, gradients and temporaries: on CUDA from the
allocator's statistics, on the CPU from the profiler's record of allocations and frees.

Achieved throughput: the FLOPs of drdet's forward on one image (tools/analyze_model.py's
counter: convolutions and matrix products, 2 FLOPs per multiply-add) times the images, and for
a training step three times that (the usual estimate: the backward pass costs about twice the
forward; an upper bound here, as the frozen stem and res2 need no weight gradients), divided by
the time: TFLOP/s per row, and on a GPU of the table PEAK_TFLOPS also the fraction of the card's
dense peak (bf16/fp16 with --amp, TF32 without; other cards and the CPU: no fraction).

Times are medians over --reps runs after --warmup runs; drdet's and torchvision's training steps,
and their inference calls, alternate so that a change of machine load hits both. The last
column is drdet / torchvision (< 1: drdet is faster). --json writes the figures to a file.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analyze_model import forward_flops  # noqa: E402
from benchmark_ops import _cpu_peak_start, _cpu_peak_stop, timed_call  # noqa: E402  (tools/ is on sys.path when run as a script)

from drdet.checkpoint.fcos_conversion import convert_torchvision_fcos  # noqa: E402
from drdet.checkpoint.weights import convert_torchvision_retinanet  # noqa: E402
from drdet.engine.defaults import load_config  # noqa: E402
from drdet.modeling import build_detector  # noqa: E402
from drdet.modeling.inference_copy import prepare_for_inference  # noqa: E402
from drdet.utils.errors import run_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "torchvision", "retinanet_resnet50_fpn_torchvision.yaml")
# --model: (drdet config, config node of the head's keys, converter, NMS threshold)
MODELS = {
    "retinanet": (CONFIG, "MODEL.RETINANET", convert_torchvision_retinanet, 0.5),
    "fcos": (
        os.path.join(ROOT, "configs", "torchvision", "fcos_resnet50_fpn_torchvision.yaml"),
        "MODEL.FCOS",
        convert_torchvision_fcos,
        0.6,
    ),
}


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


def peak_tflops(device_name: str, amp: bool):
    """The card's dense peak (bf16/fp16 with `amp`, else TF32) in TFLOP/s, or None when the
    card is not in PEAK_TFLOPS."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks[0] if amp else peaks[1]
    return None


# Post-processing parameters shared by both models (drdet's config defaults).
PRE_NMS_TOP_N, NMS_THRESH, DETECTIONS_PER_IMG = 1000, 0.5, 100


def drdet_model(
    device,
    loss_type,
    size,
    score_thresh=0.05,
    torchvision_state=None,
    winograd=True,
    arch="retinanet",
):
    """drdet's RetinaNet (`arch` "fcos": FCOS) in torchvision's conventions; with
    `torchvision_state` (a torchvision_model's state dict) holding its weights; `winograd`:
    MODEL.CPU_WINOGRAD."""
    config, node, convert, nms_thresh = MODELS[arch]
    cfg = load_config(
        config,
        [
            "MODEL.CPU_WINOGRAD",
            str(winograd),
            "MODEL.DEVICE",
            device.type,
            f"{node}.LOSS_TYPE",
            loss_type,
            f"{node}.INFERENCE_TH",
            str(score_thresh),
            f"{node}.PRE_NMS_TOP_N",
            str(PRE_NMS_TOP_N),
            f"{node}.NMS_TH",
            str(nms_thresh),
            "TEST.DETECTIONS_PER_IMG",
            str(DETECTIONS_PER_IMG),
            "INPUT.MIN_SIZE_TEST",
            str(min(size)),
            "INPUT.MAX_SIZE_TEST",
            str(max(size)),
        ],
    )
    model = build_detector(cfg)
    if torchvision_state is not None:
        state = convert(torchvision_state, class_columns=range(1, 81))
        model.load_state_dict(state, strict=True)
    return model.to(device)


def torchvision_model(device, size, score_thresh=0.05, arch="retinanet"):
    """torchvision's RetinaNet R-50-FPN (v1) (`arch` "fcos": FCOS R-50-FPN) as
    retinanet_resnet50_fpn (fcos_resnet50_fpn) builds it around pretrained weights:
    FrozenBatchNorm2d, layer2..layer4 trainable; random weights."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    # num_classes counts torchvision's unused label 0: 80 object classes -> 81.
    detector = FCOS if arch == "fcos" else RetinaNet
    model = detector(
        backbone,
        num_classes=81,
        min_size=min(size),
        max_size=max(size),
        score_thresh=score_thresh,
        nms_thresh=MODELS[arch][3],
        detections_per_img=DETECTIONS_PER_IMG,
        topk_candidates=PRE_NMS_TOP_N,
    )
    return model.to(device)


def model_pair(device, size, score_thresh, loss_types=("FOCAL",), winograd=True, arch="retinanet"):
    """(torchvision model, {loss type: drdet model}) with the same initial weights (seed 0)."""
    torch.manual_seed(0)
    tv = torchvision_model(device, size, score_thresh, arch)
    state = {k: v.cpu() for k, v in tv.state_dict().items()}
    return tv, {
        t: drdet_model(device, t, size, score_thresh, state, winograd, arch) for t in loss_types
    }


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


def timed_alternating(fns, device, warmup, reps):
    """{name: median seconds} of each of `fns` ({name: fn}), called in turn: warmup rounds,
    then `reps` timed rounds of one call each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed_call(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mib(fn, device):
    """MiB that one call of fn allocates above what was allocated before it (its activations,
    gradients and temporaries): CUDA from the allocator's statistics, CPU from the profiler's
    record of allocations and frees (torch's CPU allocator keeps no statistics)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _cpu_peak_start()
    fn()
    return _cpu_peak_stop() / 2**20


def print_profile(title, fn, device, rows=12):
    """torch.profiler's table of the operators with the most self time in one call of fn."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n{title}:")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


def train_step_fn(model, images, targets, device, amp, amp_dtype=torch.float16):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    model.train()

    def step():
        with torch.autocast(device.type, enabled=amp, dtype=amp_dtype):
            losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def inference_fn(model, images, device, amp, amp_dtype=torch.float16):
    """fn() running `model` (already in its inference form) on `images`, under no_grad."""

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, enabled=amp, dtype=amp_dtype):
            return model(images)

    return run


def _amp_dtype(name, device):
    """The autocast dtype of --amp-dtype (drdet.engine.speed.amp_dtype, SPEED.AMP_DTYPE)."""
    from drdet.engine.speed import amp_dtype

    return amp_dtype(name, device)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--model",
        default="retinanet",
        choices=sorted(MODELS),
        help="the detector compared (default retinanet)",
    )
    parser.add_argument(
        "--batch",
        "--batch-size",
        type=int,
        default=None,
        help="images per step (e.g. 8, 16, 32); default: 2 on CPU, 8 on CUDA",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="default: 512 512 on CPU, 800 1344 on CUDA (a multiple of 32)",
    )
    parser.add_argument("--amp", action="store_true", help="torch.autocast (CUDA)")
    parser.add_argument(
        "--amp-dtype",
        default="float16",
        choices=["float16", "bfloat16", "auto"],
        help="autocast dtype with --amp (auto: bfloat16 where the card has it)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark (cuDNN's autotuner)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last for both models' training step and torchvision's "
        "inference too (drdet's inference copy is channels_last on the CPU "
        "anyway)",
    )
    parser.add_argument(
        "--parts", default="train,inference", help="comma-separated subset of train,inference"
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.05,
        help="inference score threshold of both models (default 0.05)",
    )
    parser.add_argument(
        "--unprepared",
        action="store_true",
        help="also time drdet's model as built, in eval mode, without "
        "prepare_for_inference (the effect of the inference copy)",
    )
    parser.add_argument(
        "--direct-conv",
        action="store_true",
        help="also time drdet's DR training step with MODEL.CPU_WINOGRAD False "
        "(oneDNN's direct convolutions: the effect of the Winograd ones)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timing, print torch.profiler's top operators (self CPU "
        "time) of one training step of each model",
    )
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
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch}")
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    amp_dtype = _amp_dtype(args.amp_dtype, device)
    n = args.batch or (2 if device.type == "cpu" else 8)
    size = tuple(args.size or ((512, 512) if device.type == "cpu" else (800, 1344)))
    torch.manual_seed(0)
    images, targets = batch(device, n, size)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.model}; torch {torch.__version__}; {where}; batch {n} at {size[0]}x{size[1]}; "
        f"amp {args.amp}{f' ({amp_dtype})' if args.amp else ''}; "
        f"score threshold {args.score_thresh}"
    )
    peak = peak_tflops(where, args.amp) if device.type == "cuda" else None

    # Both models take the same RGB 0-1 tensors and normalise them the same way.
    rows = []  # (label, seconds, ratio or None)
    if "train" in parts:
        tv, models = model_pair(device, size, args.score_thresh, ("FOCAL", "DR"), arch=args.model)
        models = {"focal": models["FOCAL"], "DR": models["DR"]}
        step_flops = 3 * n * forward_flops(models["DR"], size)
        if args.direct_conv:
            models["DR, direct convolutions"] = model_pair(
                device, size, args.score_thresh, ("DR",), winograd=False, arch=args.model
            )[1]["DR"]
        if args.channels_last:
            tv = tv.to(memory_format=torch.channels_last)
            models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        # The steps alternate, like the inference calls below.
        steps = {"torchvision": train_step_fn(tv, images, targets, device, args.amp, amp_dtype)}
        steps.update(
            {
                name: train_step_fn(m, images, targets, device, args.amp, amp_dtype)
                for name, m in models.items()
            }
        )
        t = timed_alternating(steps, device, args.warmup, args.reps)
        mem = {name: peak_memory_mib(fn, device) for name, fn in steps.items()}
        if args.profile:
            for name, fn in steps.items():
                print_profile(f"training step, {name}", fn, device)
        rows.append(
            (
                "train step, focal (torchvision)",
                t["torchvision"],
                None,
                mem["torchvision"],
                step_flops,
            )
        )
        for name in models:
            rows.append(
                (
                    f"train step, {name} (drdet)",
                    t[name],
                    t[name] / t["torchvision"],
                    mem[name],
                    step_flops,
                )
            )
    if "inference" in parts:
        # fresh models (the training steps above changed the weights)
        tv, ours = model_pair(device, size, args.score_thresh, arch=args.model)
        tv, ours = tv.eval(), ours["FOCAL"]
        image_flops = forward_flops(ours, size)
        if args.channels_last:
            tv = tv.to(memory_format=torch.channels_last)
            ours = ours.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        drdet_inference = prepare_for_inference(ours)
        prepare_s = time.perf_counter() - start
        fns = {
            "drdet": inference_fn(drdet_inference, images, device, args.amp, amp_dtype),
            "torchvision": inference_fn(tv, images, device, args.amp, amp_dtype),
        }
        if args.unprepared:
            fns["drdet unprepared"] = inference_fn(ours.eval(), images, device, args.amp, amp_dtype)
        dets = {name: fn() for name, fn in fns.items()}
        counts = {name: [len(d["scores"]) for d in out] for name, out in dets.items()}
        # same weights, same images: the same scores (the boxes move by up to about a pixel,
        # torchvision's anchors being rounded to integers)
        score_diff = max(
            (
                float((a["scores"] - b["scores"]).abs().max())
                for a, b in zip(dets["drdet"], dets["torchvision"])
                if len(a["scores"]) == len(b["scores"]) > 0
            ),
            default=float("nan"),
        )
        t = timed_alternating(fns, device, args.warmup, args.reps)
        mem = {name: peak_memory_mib(fn, device) for name, fn in fns.items()}  # per batch
        rows.append(
            (
                "inference per image (torchvision)",
                t["torchvision"] / n,
                None,
                mem["torchvision"],
                image_flops,
            )
        )
        rows.append(
            (
                "inference per image (drdet)",
                t["drdet"] / n,
                t["drdet"] / t["torchvision"],
                mem["drdet"],
                image_flops,
            )
        )
        if args.unprepared:
            rows.append(
                (
                    "  same, without prepare_for_inference",
                    t["drdet unprepared"] / n,
                    t["drdet unprepared"] / t["torchvision"],
                    mem["drdet unprepared"],
                    image_flops,
                )
            )
        print(
            f"  detections per image: drdet {counts['drdet']}, torchvision "
            f"{counts['torchvision']} (largest score difference {score_diff:.1e}); drdet's "
            f"prepare_for_inference (once per model) {prepare_s * 1e3:.0f} ms"
        )
    work = {label.split(" (")[0]: flops for label, _, _, _, flops in rows}
    print(
        "  FLOPs (tools/analyze_model.py's count): "
        + "; ".join(f"{what} {flops / 1e9:,.0f} GFLOP" for what, flops in work.items())
        + (" (a training step: 3x the forward of the batch)" if "train" in parts else "")
        + (
            f"; card's dense {'bf16/fp16' if args.amp else 'TF32'} peak {peak:.0f} TFLOP/s"
            if peak
            else ""
        )
    )
    print(
        f"  {'':<44} {'time':>12} {'peak memory':>15} {'TFLOP/s':>9}"
        + (f" {'of peak':>8}" if peak else "")
        + "   ratio drdet / torchvision (time)"
    )
    for label, seconds, ratio, mib, flops in rows:
        tflops = flops / seconds / 1e12
        print(
            f"  {label:<44} {seconds * 1e3:9.1f} ms {mib:11.0f} MiB {tflops:9.3g}"
            + (f" {tflops / peak:8.1%}" if peak else "")
            + (f"   {ratio:.2f}" if ratio else "")
        )
    peak_mib = None
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        print(f"  peak memory {peak_mib:.0f} MiB (all runs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": args.model,
                    "torch": torch.__version__,
                    "device": where,
                    "batch": n,
                    "size": size,
                    "amp": args.amp,
                    "score_thresh": args.score_thresh,
                    "warmup": args.warmup,
                    "reps": args.reps,
                    "amp_dtype": str(amp_dtype),
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
                },
                f,
                indent=1,
            )
    return rows


if __name__ == "__main__":
    sys.exit(run_main(main))

#!/usr/bin/env python
"""drdet's RetinaNet against torchvision's `retinanet_resnet50_fpn` (or, with --model fcos,
drdet's FCOS against torchvision's `fcos_resnet50_fpn`), same architecture, same images, same
batch, on one machine: a training step (forward, backward, SGD step) with focal loss and with DR
loss, and inference per image including post-processing.

    python tools/benchmark_model.py --device cpu                  # batch 2 at 512 x 512
    python tools/benchmark_model.py --device cpu --parts inference --reps 11
    python tools/benchmark_model.py --device cuda --amp           # batch 8 at 800 x 1344
    python tools/benchmark_model.py --device cpu --model fcos     # FCOS, batch 2 at 512 x 512
    python tools/benchmark_model.py --device cpu --detectors retinanet,fcos,atss  # drdet's own

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

import os
import sys

import torch

from drdet.engine.defaults import tool_parser
from drdet.engine.model_benchmark import (
    DETECTORS,
    MODELS,
    BenchmarkSetup,
    detector_rows,
    inference_rows,
    print_rows,
    random_batch,
    train_rows,
    write_json,
)
from drdet.engine.speed import amp_dtype
from drdet.utils.benchmark import peak_tflops
from drdet.utils.errors import UserValueError, run_main

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _add_setup_arguments(parser):
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


def _add_run_arguments(parser):
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
        "--detectors",
        metavar="LIST",
        help="instead of the comparison with torchvision: drdet's detectors side by side "
        f"(comma-separated, of {','.join(DETECTORS)}; the first is the reference), DR loss",
    )
    parser.add_argument(
        "--without-extension",
        action="store_true",
        help="also time drdet with the pure-PyTorch forms of its ops (as where drdet._C is not "
        "built; set DRDET_USE_EXT=0 to run every drdet row so)",
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


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    _add_setup_arguments(parser)
    _add_run_arguments(parser)
    return parser.parse_args(argv)


def benchmark_setup(args) -> BenchmarkSetup:
    """The setup of the command line, checked; sets the threads and cuDNN's autotuner."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserValueError("--device cuda: no CUDA GPU is visible")
    parts = set(args.parts.split(","))
    if not parts or parts - {"train", "inference"}:
        raise UserValueError(f"--parts: a subset of train,inference, got {args.parts!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch is not None and args.batch < 1:
        raise UserValueError(f"--batch-size must be >= 1, got {args.batch}")
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    cpu = device.type == "cpu"
    return BenchmarkSetup(
        config_file=os.path.join(CONFIGS, MODELS[args.model].config),
        arch=args.model,
        device=device,
        batch=args.batch or (2 if cpu else 8),
        size=tuple(args.size or ((512, 512) if cpu else (800, 1344))),
        amp=args.amp,
        amp_dtype=amp_dtype(args.amp_dtype, device),
        score_thresh=args.score_thresh,
        warmup=args.warmup,
        reps=args.reps,
        channels_last=args.channels_last,
        direct_conv=args.direct_conv,
        without_extension=args.without_extension,
        unprepared=args.unprepared,
        profile=args.profile,
    )


def main(argv=None):
    args = parse_args(argv)
    setup = benchmark_setup(args)
    torch.manual_seed(0)
    images, targets = random_batch(setup.device, setup.batch, setup.size)
    cuda = setup.device.type == "cuda"
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    size, amp = setup.size, f" ({setup.amp_dtype})" if args.amp else ""
    print(
        f"{args.detectors or args.model}; torch {torch.__version__}; {where}; batch {setup.batch} at "
        f"{size[0]}x{size[1]}; amp {args.amp}{amp}; score threshold {args.score_thresh}"
    )
    peak = peak_tflops(where, args.amp) if cuda else None
    # Both models take the same RGB 0-1 tensors and normalise them the same way.
    if args.detectors:
        archs = args.detectors.split(",")
        rows = detector_rows(setup, images, targets, CONFIGS, archs)
        print_rows(rows, args.amp, peak, ratio_of=f"to {archs[0]}")
    else:
        parts = args.parts.split(",")
        rows = train_rows(setup, images, targets) if "train" in parts else []
        rows += inference_rows(setup, images) if "inference" in parts else []
        print_rows(rows, args.amp, peak)
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    if cuda:
        print(f"  peak memory {peak_mib:.0f} MiB (all runs)")
    if args.json:
        write_json(args.json, setup, rows, where, peak, peak_mib)
    return rows


if __name__ == "__main__":
    sys.exit(run_main(main))

#!/usr/bin/env python
r"""Training data-loading throughput on its own: images/s of the training data loader of a config
(dataset, decoding, the INPUT.* transforms, sampler, collate) for several DATALOADER.NUM_WORKERS,
with no model.

    python tools/benchmark_data.py                       # synthetic COCO-style JPEGs, 0/1/2 workers
    python tools/benchmark_data.py --dataset coco_2017_train --workers 0,2,4 --images 400
    python tools/benchmark_data.py --config-file configs/synthetic/dr_R-18-FPN_synthetic.yaml \
        INPUT.MIN_SIZE_TRAIN "(256,)"

Default dataset: a synthetic COCO-format set (JPEG files and a COCO json, read through the same
COCODataset and transforms as COCO) generated on the fly into a temporary DRDET_DATASETS, which
is removed afterwards; --synthetic-images / --synthetic-size set its size (default 200 images of
640 x 640 px, about COCO's image size). --dataset takes any name the catalog knows (registered
names under DRDET_DATASETS, coco:<json>:<image folder>, voc:<folder>:<split>, synthetic:...).

For each worker count: a fresh loader (build_data_loader(cfg, is_train=True), batches of --batch
images), --warmup batches not timed (worker start-up, first file reads), then --images images
(rounded up to whole batches) of which the first 2 x workers batches, which the workers may have
prepared ahead during the warm-up, are not timed either. Prints images/s per worker count, the
machine's load average before and after, and writes the figures to --json when given.
KEY VALUE pairs (before, between or after the flags) override the config (e.g.
INPUT.MIN_SIZE_TRAIN "(640,)").
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch

from drdet.data import build_data_loader
from drdet.engine.defaults import default_argument_parser, load_config, parse_tool_args
from drdet.utils.errors import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "dr_retina", "dr_R-50-FPN_1x.yaml")


def parse_args(argv=None):
    parser = default_argument_parser(__doc__, config_file=False)
    parser.add_argument(
        "--config-file",
        default=CONFIG,
        metavar="FILE",
        help="yaml config whose INPUT / DATALOADER settings are used "
        "(default: configs/dr_retina/dr_R-50-FPN_1x.yaml)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset name (default: a synthetic set in a temporary folder)",
    )
    parser.add_argument("--synthetic-images", type=int, default=200)
    parser.add_argument("--synthetic-size", type=int, default=640, help="pixels (square)")
    parser.add_argument(
        "--workers",
        default="0,1,2",
        help="comma-separated DATALOADER.NUM_WORKERS values to measure",
    )
    parser.add_argument("--batch", type=int, default=2, help="images per batch (one process)")
    parser.add_argument("--images", type=int, default=100, help="timed images per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per setting")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the figures here")
    args = parse_tool_args(parser, argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: comma-separated integers, got {args.workers!r}")
    if args.batch < 1 or args.images < 1 or args.warmup < 0 or min(args.workers) < 0:
        parser.error("--batch and --images must be >= 1, --warmup and --workers >= 0")
    return args


def measure(cfg, dataset: str, workers: int, batch: int, images: int, warmup: int) -> dict:
    """Throughput of the training loader of `cfg` on `dataset` with `workers` workers."""
    batches = math.ceil(images / batch)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            (dataset,),
            "DATALOADER.NUM_WORKERS",
            workers,
            "SOLVER.IMS_PER_BATCH",
            batch,
            "SOLVER.MAX_ITER",
            warmup + batches,
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    cfg.freeze()
    start = time.perf_counter()
    loader = build_data_loader(cfg, is_train=True, rank=0, world_size=1)
    stream = iter(loader)
    for _ in range(warmup):
        next(stream)
    warm_s = time.perf_counter() - start
    # Workers keep up to 2 batches each ready ahead (DataLoader's prefetch_factor): when the
    # timing starts they may already be done, so the clock starts after them.
    ahead = min(2 * workers, batches - 1)
    count, pixels = 0, 0
    start = time.perf_counter()
    for b in range(batches):
        batch_images, _, _ = next(stream)
        if b < ahead:
            start = time.perf_counter()
            continue
        count += len(batch_images)
        pixels += sum(img.shape[-2] * img.shape[-1] for img in batch_images)
    seconds = time.perf_counter() - start
    del stream, loader  # stops the workers
    return {
        "workers": workers,
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds,
        "ms_per_image": 1e3 * seconds / count,
        "mean_megapixels": pixels / count / 1e6,
        "startup_and_warmup_s": warm_s,
    }


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    temp_root = None
    dataset = args.dataset
    old_root = os.environ.get("DRDET_DATASETS")
    try:
        if dataset is None:
            temp_root = tempfile.mkdtemp(prefix="drdet_bench_data_")
            os.environ["DRDET_DATASETS"] = temp_root
            dataset = f"synthetic:{args.synthetic_images}:0:{args.synthetic_size}"
            start = time.perf_counter()
            from drdet.data.catalog import get_dataset

            get_dataset(dataset, None, True)  # generates the JPEG files and the json
            print(f"generated {dataset} in {temp_root} ({time.perf_counter() - start:.1f} s)")
        load_before = os.getloadavg()
        print(
            f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
            f"{torch.get_num_threads()}; config {os.path.relpath(args.config_file)}; "
            f"dataset {dataset}; INPUT.MIN_SIZE_TRAIN {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, "
            f"MAX_SIZE_TRAIN {cfg.INPUT.MAX_SIZE_TRAIN}; batch {args.batch}; "
            f"load average {load_before[0]:.2f}"
        )
        results = []
        for workers in args.workers:
            r = measure(cfg, dataset, workers, args.batch, args.images, args.warmup)
            results.append(r)
            print(
                f"  workers {workers}: {r['images_per_s']:7.1f} images/s "
                f"({r['ms_per_image']:.1f} ms / image, {r['images']} images, "
                f"{r['mean_megapixels']:.2f} Mpx each after resizing)"
            )
        load_after = os.getloadavg()
        print(f"load average after: {load_after[0]:.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "torch": torch.__version__,
                        "cpus": os.cpu_count(),
                        "config": args.config_file,
                        "dataset": dataset,
                        "batch": args.batch,
                        "overrides": list(args.opts),
                        "load_average": [load_before[0], load_after[0]],
                        "results": results,
                    },
                    f,
                    indent=1,
                )
        return results
    finally:
        if temp_root is not None:
            shutil.rmtree(temp_root, ignore_errors=True)
            if old_root is None:
                os.environ.pop("DRDET_DATASETS", None)
            else:
                os.environ["DRDET_DATASETS"] = old_root


if __name__ == "__main__":
    sys.exit(run_main(main))

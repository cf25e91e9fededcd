#!/usr/bin/env python
r"""drdet at COCO's scale: build time and memory of the training set, the DataLoader workers'
memory as batches are read, and the time of a val2017-sized COCO evaluation per backend.

    python tools/benchmark_coco_scale.py --data-dir /tmp/coco_scale
    python tools/benchmark_coco_scale.py --data-dir /tmp/coco_scale --before /path/to/old/drdet \
        --json out.json                # today's code and another checkout, side by side

Generates (once, into --data-dir) a COCO-train-sized json (118,287 images, 775k boxes with
12-point polygons, every image a symlink to one small JPEG) and a val2017-sized one (5,000
images, 37,840 boxes) with --detections per image (drdet/data/coco_scale.py); --train-json and
--train-images take a real COCO training set instead. Each checkout (--before, then this one)
runs in its own process (drdet/data/scale_benchmark.py): the training loader is built (time;
main process PSS and anonymous memory before and after) and read for --batches batches of
--batch images with --workers workers (the workers' summed USS and the main PSS at each of
them), then the val set is evaluated (the checkout's default backend for --before; each of
COCO_EVAL_BACKENDS for this one). The load average is printed beside every figure. Images are
not resized (INPUT.MIN/MAX_SIZE_TRAIN 48/64, the generated images' size): what is measured is
the dataset, not the transforms. Needs Linux (/proc).
"""

import json
import os
import sys

import drdet
from drdet.data.scale_benchmark import (
    CHECKPOINTS,
    largest_difference,
    loader_overrides,
    measure_evaluation,
    measure_loader,
    prepare_sets,
)
from drdet.evaluation import COCO_EVAL_BACKENDS
from drdet.utils.errors import run_main

HERE = os.path.dirname(os.path.dirname(os.path.abspath(drdet.__file__)))


def parse_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="where the generated sets are kept")
    parser.add_argument("--before", default=None, help="another drdet checkout to measure too")
    parser.add_argument("--train-json", default=None, help="a real COCO training json")
    parser.add_argument("--train-images", default=None, help="its image folder")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", default=",".join(map(str, CHECKPOINTS)))
    parser.add_argument("--detections", type=int, default=100, help="per val image")
    parser.add_argument("--scale", type=float, default=1.0, help="sets this fraction of COCO's")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if (args.train_json is None) != (args.train_images is None):
        parser.error("--train-json and --train-images go together")
    return args


def _loader_lines(r: dict) -> list[str]:
    before, after = r["before_build"], r["after_build"]
    lines = [
        f"  {r['tree']}: built {r['images']} images in {r['build_seconds']:.1f} s "
        f"(load {after['load']:.2f}); main PSS {before['main_pss_mib']:.0f} -> "
        f"{after['main_pss_mib']:.0f} MiB, anonymous {before['main_anonymous_mib']:.0f} -> "
        f"{after['main_anonymous_mib']:.0f} MiB"
    ]
    for b in r["batches"]:
        lines.append(
            f"    batch {b['batch']:5d} ({b['seconds']:6.1f} s): {b['workers']} workers' USS "
            f"{b['workers_uss_mib']:7.1f} MiB, main PSS {b['main_pss_mib']:6.0f} MiB, "
            f"load {b['load']:.2f}"
        )
    return lines


def main(argv=None):
    args = parse_args(argv)
    paths = prepare_sets(args.data_dir, args.detections, args.scale)
    trees = ([args.before] if args.before else []) + [HERE]
    out: dict = {"paths": paths, "loader": [], "evaluation": []}
    if not args.skip_loader:
        ann = args.train_json or paths["train_json"]
        images = args.train_images or paths["train_images"]
        overrides = loader_overrides(
            ann, images, args.workers, args.batch, max(args.batches), 48, 64
        )
        print(f"training set {ann}: {args.workers} workers, {args.batch} images a batch")
        for tree in trees:
            out["loader"].append(measure_loader(tree, overrides, args.batches))
            print("\n".join(_loader_lines(out["loader"][-1])), flush=True)
    if not args.skip_eval:
        runs = [(t, None) for t in trees[:-1]] + [(HERE, b) for b in COCO_EVAL_BACKENDS]
        print(f"evaluation of {paths['val_json']}, {args.detections} detections per image")
        for tree, backend in runs:
            r = measure_evaluation(
                tree, paths["val_json"], paths["val_images"], paths["detections"], backend
            )
            diff = largest_difference(r["metrics"], out["evaluation"][0]["metrics"]) if (
                out["evaluation"]) else 0.0  # fmt: skip
            out["evaluation"].append(r)
            print(
                f"  {tree} [{backend or 'default'}]: evaluated in {r['seconds']:.2f} s (test set "
                f"built in {r['build_seconds']:.1f} s; load {r['load']:.2f}); AP "
                f"{r['metrics']['AP']:.6f}; largest difference to the first: {diff:.2g}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(run_main(main))

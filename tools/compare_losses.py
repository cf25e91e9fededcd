#!/usr/bin/env python
r"""DR loss vs focal loss on your data in one command: trains both on the same data, schedule
and seeds, evaluates both with the COCO metric and writes OUTPUT/report.md (AP table side by
side with the difference, the score distributions of the paper's Fig. 4/5, training curves).

    python tools/compare_losses.py                                  # built-in synthetic set
    python tools/compare_losses.py --config-file configs/voc/dr_R-50-FPN_voc07.yaml --num-gpus 8
    python tools/compare_losses.py --dataset coco:train.json:images \
        --test-dataset coco:val.json:images --max-iter 2000 --output-dir out/mine
    python tools/compare_losses.py --ablation table2 --max-iter 300  # the paper's ablations

Each run trains through tools/train_net.py in its own folder OUTPUT/<run>/ (torchrun with
--num-gpus N > 1); each loss brings its own setup (prior, matcher, score threshold, NMS; see
drdet/config/setups.py), so the config may name either loss. Running the command again
with the same arguments resumes: finished runs are skipped, a half-finished one continues from
its last checkpoint. Trailing KEY VALUE pairs override the config of every run.

--ablation table1|table2|table3|grouping runs the variants of configs/ablations/ (their own keys,
applied to --config-file) and prints the paper's table layout with the paper's COCO minival AP
beside the measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drdet.config import flat_keys, get_cfg, load_yaml_with_base, loss_key, setup_keys  # noqa: E402
from drdet.engine.defaults import load_config, safe_folder_name  # noqa: E402

DEFAULT_CONFIG = os.path.join("configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
ABLATIONS_DIR = os.path.join(ROOT, "configs", "ablations")


@dataclass
class Run:
    """One training run: its folder name, its label in the tables, its own config overrides and
    the paper's COCO minival AP for it (ablations)."""

    name: str
    label: str
    opts: list[str]
    paper_ap: float | None = None
    columns: dict[str, str] = field(default_factory=dict)


# The paper's Tables 1-3 (R-50-FPN 1x, COCO minival AP): (row label columns, ablation yaml or
# None for the unchanged DR config, loss, paper AP). "Focal" is the loss switched to FOCAL.
ABLATIONS: dict[str, dict[str, Any]] = {
    "table1": {
        "header": ("h+", "h-"),
        "rows": [
            (("e", "e"), "dr_R-50-FPN_1x_hpos-e_hneg-e.yaml", "DR", 37.1),
            (("e", "3.5"), "dr_R-50-FPN_1x_hpos-e_hneg-3.5.yaml", "DR", 37.4),
            (("e", "5.5"), "dr_R-50-FPN_1x_hpos-e_hneg-5.5.yaml", "DR", 37.2),
            (("e", "20"), "dr_R-50-FPN_1x_hpos-e_hneg-20.yaml", "DR", 36.6),
            (("5.5", "3.5"), "dr_R-50-FPN_1x_hpos-5.5_hneg-3.5.yaml", "DR", 36.7),
            (("20", "3.5"), "dr_R-50-FPN_1x_hpos-20_hneg-3.5.yaml", "DR", 35.6),
        ],
    },
    "table2": {
        "header": ("Loss",),
        "rows": [
            (("Focal",), None, "FOCAL", 36.1),
            (("Hinge",), "dr_R-50-FPN_1x_hinge.yaml", "DR", 35.8),
            (("rho = 0.2",), "dr_R-50-FPN_1x_quadratic_rho-0.2.yaml", "DR", 36.9),
            (("rho = 0.5",), "dr_R-50-FPN_1x_quadratic_rho-0.5.yaml", "DR", 37.2),
            (("L = 4",), "dr_R-50-FPN_1x_logistic_L-4.yaml", "DR", 37.2),
            (("L = 6",), "dr_R-50-FPN_1x_logistic_L-6.yaml", "DR", 37.4),
            (("L = 8",), "dr_R-50-FPN_1x_logistic_L-8.yaml", "DR", 37.1),
            (("L = 10",), "dr_R-50-FPN_1x_logistic_L-10.yaml", "DR", 36.8),
        ],
    },
    "table3": {
        "header": ("Pairing",),
        "rows": [
            (("Focal",), None, "FOCAL", 36.1),
            (("NegOnly",), "dr_R-50-FPN_1x_negonly.yaml", "DR", 37.0),
            (("DR",), None, "DR", 37.4),
        ],
    },
    # The published numbers (37.4 at R-50 1x) came from the released code's per-GPU batch.
    "grouping": {
        "header": ("MODEL.DR_LOSS.GROUPING",),
        "rows": [(("image",), None, "DR", None), (("batch",), None, "DR", 37.4)],
    },
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"yaml config of the model and data (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        help="training set: a registered name or a coco:/voc:/synthetic: form "
        "(default: the config's DATASETS.TRAIN)",
    )
    parser.add_argument(
        "--test-dataset",
        metavar="NAME",
        help="evaluation set (default: the config's DATASETS.TEST, or --dataset)",
    )
    parser.add_argument("--output-dir", default=os.path.join("output", "compare"), metavar="DIR")
    parser.add_argument(
        "--losses",
        nargs=2,
        default=["DR", "FOCAL"],
        metavar="LOSS",
        help="the two classification losses compared (default DR FOCAL)",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        metavar="N",
        help="iterations per run; SOLVER.STEPS, WARMUP_ITERS and "
        "CHECKPOINT_PERIOD scale with it (default: the config's)",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=0,
        metavar="N",
        help="GPUs per run (N > 1 through torchrun); 0: the config's device",
    )
    parser.add_argument(
        "--ablation",
        choices=sorted(ABLATIONS),
        help="run the paper's ablation instead of DR vs focal",
    )
    parser.add_argument(
        "--score-images",
        type=int,
        default=50,
        metavar="N",
        help="test images for the score distributions (default 50)",
    )
    parser.add_argument(
        "--keep-explicit",
        action="store_true",
        help="let the config's own prior/matcher/threshold keys apply to both "
        "losses (by default such a config is refused)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for all runs")
    args = parser.parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    if args.max_iter is not None and args.max_iter < 1:
        parser.error("--max-iter must be >= 1")
    if args.num_gpus < 0 or args.score_images < 1:
        parser.error("--num-gpus must be >= 0 and --score-images >= 1")
    return args


def fail(message: str) -> None:
    raise SystemExit(f"compare_losses: {message}")


def check_dataset(name: str) -> int:
    """Number of categories of dataset ``name``; a clear error if it is unknown or absent."""
    from drdet.data.catalog import get_dataset

    try:
        dataset = get_dataset(name, transforms=None, is_train=False)
    except (KeyError, ValueError, FileNotFoundError) as err:
        fail(f"dataset {name!r}: {err}")
    return int(dataset.num_classes)


def scaled_schedule(cfg, max_iter: int) -> list[str]:
    """SOLVER overrides that run the config's schedule in ``max_iter`` iterations."""
    factor = max_iter / cfg.SOLVER.MAX_ITER
    steps = tuple(sorted({max(1, min(max_iter, round(s * factor))) for s in cfg.SOLVER.STEPS}))
    return [
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        repr(steps),
        "SOLVER.WARMUP_ITERS",
        str(max(0, min(max_iter - 1, round(cfg.SOLVER.WARMUP_ITERS * factor)))),
        "SOLVER.CHECKPOINT_PERIOD",
        str(max(1, max_iter // 3)),
    ]


def loss_key_of(config_file: str, opts: Sequence[str]) -> str:
    """The loss key of the config's meta-architecture; a clear error when it has none."""
    cfg = get_cfg()
    try:
        cfg.merge_from_file_and_list(config_file, list(opts))
    except (KeyError, ValueError) as err:
        fail(f"{config_file} with the overrides {list(opts)}: {err}")
    meta = cfg.MODEL.META_ARCHITECTURE
    key = loss_key(meta)
    if key is None:
        fail(
            f"{config_file}: meta-architecture {meta!r} declares no loss key "
            "(drdet.config.register_detector_losses), so the tool cannot switch its "
            "classification loss"
        )
    return str(key)


def check_switchable(
    config_file: str, opts: Sequence[str], loss_key: str, losses: Sequence[str], keep_explicit: bool
) -> None:
    """Refuses what would make the two runs differ in more than the loss and its setup."""
    from drdet.modeling.registry import CLASSIFICATION_LOSSES

    for loss in losses:
        if loss not in CLASSIFICATION_LOSSES:
            fail(f"unknown loss {loss!r}; registered: {', '.join(CLASSIFICATION_LOSSES.names())}")
    if loss_key in list(opts)[0::2]:
        fail(f"the overrides set {loss_key}: the tool sets it for each run; remove it")
    meta = load_config(config_file, opts).MODEL.META_ARCHITECTURE
    fixed = sorted(set(flat_keys(load_yaml_with_base(config_file))) & set(setup_keys(meta)))
    fixed += sorted(set(list(opts)[0::2]) & set(setup_keys(meta)))
    if fixed and not keep_explicit:
        fail(
            f"{config_file} (or the overrides) fixes {', '.join(fixed)}, which each loss sets "
            f"to its own value; remove them, or pass --keep-explicit to use them for both"
        )


def plan_runs(args: argparse.Namespace, loss_key: str) -> list[Run]:
    """The runs of a DR-vs-focal comparison or of an ablation table."""
    if not args.ablation:
        return [Run(loss.lower(), loss, [loss_key, loss]) for loss in args.losses]
    table = ABLATIONS[args.ablation]
    runs = []
    for k, (labels, yaml_name, loss, paper_ap) in enumerate(table["rows"]):
        opts = [loss_key, loss]
        if yaml_name:
            own = load_yaml_with_base(os.path.join(ABLATIONS_DIR, yaml_name))
            base = load_yaml_with_base(os.path.join(ROOT, "configs", "Base-DR-Retina.yaml"))
            base_flat = flat_keys(base)
            for key, value in flat_keys(own).items():
                if base_flat.get(key) != value:
                    opts += [key, str(value)]
        if args.ablation == "grouping":
            opts += ["MODEL.DR_LOSS.GROUPING", labels[0]]
        name = safe_folder_name(f"{k}_{'_'.join(labels)}")
        runs.append(
            Run(name, " / ".join(labels), opts, paper_ap, dict(zip(table["header"], labels)))
        )
    return runs


class Progress:
    """Prints the overall stage, and each run's iteration and ETA from its log lines."""

    ETA = re.compile(r"eta: (\S+)\s+iter: (\d+)")

    def __init__(self, total: int) -> None:
        self.total = total
        self.stage = 0

    def start(self, what: str) -> None:
        self.stage += 1
        print(f"[stage {self.stage}/{self.total}] {what}", flush=True)

    def line(self, label: str, text: str, max_iter: int) -> None:
        match = self.ETA.search(text)
        if match:
            print(
                f"  [{self.stage}/{self.total} {label}] iteration {match.group(2)}/{max_iter}, "
                f"ETA {match.group(1)}",
                flush=True,
            )


def train_command(args: argparse.Namespace, run_opts: list[str], resume: bool) -> list[str]:
    script = os.path.join(ROOT, "tools", "train_net.py")
    launcher = [sys.executable]
    if args.num_gpus > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.num_gpus}",
        ]
    return (
        launcher
        + [script, "--config-file", args.config_file]
        + (["--resume"] if resume else [])
        + run_opts
    )


def result_file(run_dir: str, test_name: str) -> str:
    return os.path.join(run_dir, "inference", safe_folder_name(test_name), "metrics.json")


def train(
    args: argparse.Namespace,
    run: Run,
    opts: list[str],
    run_dir: str,
    test_name: str,
    max_iter: int,
    progress: Progress,
) -> dict[str, float]:
    """Trains and evaluates one run (skipped when finished, resumed when half-finished)."""
    done = result_file(run_dir, test_name)
    if os.path.isfile(done) and os.path.isfile(os.path.join(run_dir, "model_final.pth")):
        progress.start(f"{run.label}: finished earlier, skipped ({run_dir})")
        with open(done) as f:
            return json.load(f)
    resume = os.path.isfile(os.path.join(run_dir, "last_checkpoint"))
    progress.start(f"{run.label}: {'resuming' if resume else 'training'} in {run_dir}")
    os.makedirs(run_dir, exist_ok=True)
    command = train_command(args, opts + ["OUTPUT_DIR", run_dir], resume)
    log_path = os.path.join(run_dir, "compare_stdout.log")
    with (
        open(log_path, "a") as log,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=os.getcwd(),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as child,
    ):
        assert child.stdout is not None
        for text in child.stdout:
            log.write(text)
            log.flush()
            progress.line(run.label, text, max_iter)
    if child.returncode != 0 or not os.path.isfile(done):
        with open(log_path) as f:
            tail = "".join(f.readlines()[-15:])
        fail(
            f"the {run.label} run failed (exit {child.returncode}); its log {log_path} ends:\n"
            f"{tail}\nrun the same command again to resume it"
        )
    with open(done) as f:
        return json.load(f)


def check_same_comparison(output_dir: str, settings: dict[str, Any]) -> None:
    """A folder resumes only the comparison it was started with."""
    path = os.path.join(output_dir, "comparison.json")
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            fail(
                f"{output_dir} holds a comparison with other settings ({path}): pass another "
                f"--output-dir or delete it"
            )
    else:
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)


def score_figure(
    args: argparse.Namespace,
    runs: list[Run],
    run_opts: dict[str, list[str]],
    test_name: str,
    output: str,
) -> None:
    """The paper's Fig. 4/5 for the runs, on the first --score-images test images."""
    from drdet.data.catalog import get_dataset
    from drdet.data.transforms import build_transforms
    from drdet.engine.score_distribution import collect, plot

    results = []
    for run in runs:
        cfg = load_config(args.config_file, run_opts[run.name])
        dataset = get_dataset(test_name, build_transforms(cfg, is_train=False), is_train=False)
        weights = os.path.join(args.output_dir, run.name, "model_final.pth")
        fg, bg = collect(cfg, weights, dataset, args.score_images, 200000, seed=0)
        results.append((run.label, fg, bg))
    plot(results, output, bins=50)


def metrics_table(runs: list[Run], results: dict[str, dict[str, float]]) -> list[str]:
    """Markdown AP table, runs side by side; with two runs, the difference (first - second)."""

    def cell(value: float) -> str:
        return f"{100 * value:.1f}" if value >= 0 else "n/a"

    header = ["metric"] + [r.label for r in runs]
    if len(runs) == 2:
        header.append(f"{runs[0].label} - {runs[1].label}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in METRICS:
        values = [results[r.name].get(metric, -1.0) for r in runs]
        row = [metric] + [cell(v) for v in values]
        if len(runs) == 2:
            row.append(f"{100 * (values[0] - values[1]):+.1f}" if min(values) >= 0 else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def ablation_table(name: str, runs: list[Run], results: dict[str, dict[str, float]]) -> list[str]:
    """The paper's layout: its row labels, its COCO minival AP, then the measured metrics."""
    header = (
        list(ABLATIONS[name]["header"]) + ["paper AP (COCO)"] + [f"{m} (measured)" for m in METRICS]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        paper = "-" if run.paper_ap is None else f"{run.paper_ap:.1f}"
        measured = [
            f"{100 * results[run.name].get(m, -1.0):.1f}"
            if results[run.name].get(m, -1.0) >= 0
            else "n/a"
            for m in METRICS
        ]
        lines.append("| " + " | ".join(list(run.columns.values()) + [paper] + measured) + " |")
    return lines


def write_report(
    args: argparse.Namespace,
    runs: list[Run],
    results: dict[str, dict[str, float]],
    test_name: str,
    figures: dict[str, str],
    seconds: float,
) -> str:
    title = (
        f"Paper ablation {args.ablation}"
        if args.ablation
        else f"{runs[0].label} vs {runs[1].label}"
    )
    table = (
        ablation_table(args.ablation, runs, results)
        if args.ablation
        else metrics_table(runs, results)
    )
    lines = (
        [
            f"# {title} on {test_name}",
            "",
            f"Config `{args.config_file}`, overrides `{' '.join(args.opts) or '-'}`; each run in "
            f"its own folder under `{args.output_dir}`; COCO metric (%) on `{test_name}`. "
            f"This invocation took {seconds / 60:.1f} min.",
            "",
        ]
        + table
        + [""]
    )
    for caption, file_name in figures.items():
        lines += [f"## {caption}", "", f"![{caption}]({file_name})", ""]
    path = os.path.join(args.output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({r.label: results[r.name] for r in runs}, f, indent=1)
    print("\n".join(table))
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Runs the comparison; returns {run label: COCO metrics}."""
    start = time.time()
    args = parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail(
            "run this tool without torchrun and pass --num-gpus N: it launches each run "
            "through torchrun itself"
        )
    if not os.path.isfile(args.config_file):
        fail(f"config file not found: {args.config_file}")
    key = loss_key_of(args.config_file, args.opts)
    losses = args.losses if not args.ablation else ["DR", "FOCAL"]
    check_switchable(args.config_file, args.opts, key, losses, args.keep_explicit)
    base = load_config(args.config_file, args.opts)
    train_name = args.dataset or (base.DATASETS.TRAIN[0] if base.DATASETS.TRAIN else None)
    test_name = args.test_dataset or (
        base.DATASETS.TEST[0] if base.DATASETS.TEST and not args.dataset else train_name
    )
    if not train_name or not test_name:
        fail(f"{args.config_file} names no dataset: pass --dataset (and --test-dataset)")
    if test_name == train_name:
        print(f"warning: evaluating on the training set {train_name} (pass --test-dataset)")
    num_classes = check_dataset(train_name)
    check_dataset(test_name)
    common = [
        "DATASETS.TRAIN",
        repr((train_name,)),
        "DATASETS.TEST",
        repr((test_name,)),
        "MODEL.NUM_CLASSES",
        str(num_classes + 1),
    ]
    if args.max_iter:
        common += scaled_schedule(base, args.max_iter)
    if args.num_gpus:
        common += ["MODEL.DEVICE", "cuda"]
    max_iter = args.max_iter or base.SOLVER.MAX_ITER
    runs = plan_runs(args, key)
    run_opts = {r.name: common + r.opts + list(args.opts) for r in runs}
    for run in runs:  # every run's config is valid before anything trains
        load_config(args.config_file, run_opts[run.name])
    check_same_comparison(
        args.output_dir, {"config": args.config_file, "runs": run_opts, "num_gpus": args.num_gpus}
    )
    progress = Progress(len(runs) + 2)
    results = {
        run.name: train(
            args,
            run,
            run_opts[run.name],
            os.path.join(args.output_dir, run.name),
            test_name,
            max_iter,
            progress,
        )
        for run in runs
    }
    progress.start("figures: score distributions and training curves")
    from drdet.utils.training_curves import plot_runs

    figures = {
        "Score distributions (paper Fig. 4/5)": "scores.png",
        "Training curves": "curves.png",
    }
    try:
        score_figure(args, runs, run_opts, test_name, os.path.join(args.output_dir, "scores.png"))
    except AttributeError as err:  # a detector without anchors and a matcher (e.g. FCOS)
        print(f"warning: no score distributions for this detector ({err})")
        del figures["Score distributions (paper Fig. 4/5)"]
    plot_runs(
        [os.path.join(args.output_dir, r.name) for r in runs],
        [r.label for r in runs],
        os.path.join(args.output_dir, "curves.png"),
    )
    progress.start("report")
    path = write_report(args, runs, results, test_name, figures, time.time() - start)
    print(f"wrote {path}")
    return {run.label: results[run.name] for run in runs}


if __name__ == "__main__":
    main()

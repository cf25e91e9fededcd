#!/usr/bin/env python
r"""The paper's Fig. 4/5 for any model and dataset: the empirical density of the confidence
(sigmoid score) of foreground and background anchors, before NMS, for one or several models.

    python tools/plot_score_distribution.py --output scores.png \
        --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml --weights dr/model_final.pth --label DR \
        --config-file configs/retinanet/retinanet_R-50-FPN_1x.yaml --weights focal/model_final.pth \
        --label focal --num-images 200

Per image of the dataset (DATASETS.TEST[0] of the first config, or --dataset, with the test
transforms), the backbone and head run in eval mode and the anchors are matched to the ground
truth with the model's own matcher (its loss computation's prepare_targets):
  - foreground: anchors matched to a box (label k >= 1); the score of class k;
  - background: anchors below the background threshold; the scores of all their classes,
    subsampled (uniformly, seeded) to --num-background entries in all for speed.
Ignored anchors (between the thresholds) are left out. The means are printed.
"""
import argparse
import os
import sys
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from drdet.checkpoint import (CLASSES_KEY, check_classes, load_checkpoint_file,  # noqa: E402
                              load_model_state)
from drdet.data.catalog import get_dataset  # noqa: E402
from drdet.data.transforms import build_transforms  # noqa: E402
from drdet.engine.defaults import (add_override_arguments, load_config,  # noqa: E402
                                   parse_tool_args)
from drdet.modeling import build_detector  # noqa: E402
from drdet.utils.errors import UserFileNotFoundError, run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE",
                        help="yaml config of a model (repeat for each model)")
    parser.add_argument("--weights", action="append", required=True, metavar="PTH",
                        help="checkpoint of that model (one per --config-file)")
    parser.add_argument("--label", action="append", help="legend label (one per model)")
    parser.add_argument("--dataset", help="dataset name (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=100, help="images used (default 100)")
    parser.add_argument("--num-background", type=int, default=200000,
                        help="background scores kept in all (default 200000)")
    parser.add_argument("--bins", type=int, default=50, help="histogram bins on [0, 1]")
    parser.add_argument("--output", required=True, metavar="PNG", help="figure to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the background subsampling")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", dest="opts_flag",
                        help="config overrides applied to every model (or give them without "
                             "--opts, anywhere on the command line)")
    add_override_arguments(parser)
    args = parse_tool_args(parser, argv)
    args.opts = args.opts_flag + args.opts
    if len(args.weights) != len(args.config_file):
        parser.error(f"{len(args.weights)} --weights for {len(args.config_file)} --config-file")
    if args.label and len(args.label) != len(args.config_file):
        parser.error(f"{len(args.label)} --label for {len(args.config_file)} --config-file")
    if args.num_images <= 0 or args.num_background <= 0:
        parser.error("--num-images and --num-background must be positive")
    return args


@torch.no_grad()
def anchor_scores(model, image: Tensor, target: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
    """Scores of one image (3, H, W) in the network's input format, target "boxes"/"labels" in
    its pixels. Returns (foreground (F,): each matched anchor's score of its box's class,
    background (N, C): all class scores of the background anchors)."""
    device = model.pixel_mean.device
    batch = model.preprocess([image.to(device)])
    features = model.backbone(batch.tensors)
    cls_logits, _ = model.head(features)
    anchors = torch.cat(model.anchor_generator(features, batch.tensors.shape[-2:]))
    target = {"boxes": target["boxes"].to(device), "labels": target["labels"].to(device)}
    labels, _, _ = model.loss.prepare_targets(anchors, [target])
    labels = labels[0]
    scores = torch.cat(cls_logits, dim=1)[0].float().sigmoid()
    fg = labels > 0
    foreground = scores[fg].gather(1, (labels[fg] - 1)[:, None])[:, 0]
    return foreground.cpu(), scores[labels == 0].cpu()


def collect(cfg, weights: str, dataset, num_images: int, num_background: int,
            seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(foreground scores, subsampled background scores) of the model over the first
    ``num_images`` images of ``dataset``."""
    model = build_detector(cfg).to(cfg.MODEL.DEVICE).eval()
    data = load_checkpoint_file(weights)
    check_classes(data.get(CLASSES_KEY), weights, cfg, dataset)
    load_model_state(model, data["model"], strict=True)
    generator = torch.Generator().manual_seed(seed)
    count = min(num_images, len(dataset))
    per_image = -(-num_background // count)
    fg_all: List[Tensor] = []
    bg_all: List[Tensor] = []
    for index in range(count):
        image, target, _ = dataset[index]
        fg, bg = anchor_scores(model, image, target)
        bg = bg.flatten()
        if bg.numel() > per_image:
            bg = bg[torch.randperm(bg.numel(), generator=generator)[:per_image]]
        fg_all.append(fg)
        bg_all.append(bg)
    return torch.cat(fg_all).numpy(), torch.cat(bg_all)[:num_background].numpy()


def plot(results: Sequence[Tuple[str, np.ndarray, np.ndarray]], output: str, bins: int) -> None:
    """Density of background (left, log scale) and foreground (right) scores per model."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (label, fg, bg) in enumerate(results):
        for ax, values in zip(axes, (bg, fg)):
            if values.size:
                density, _ = np.histogram(values, bins=edges, density=True)
                ax.plot(centres, density, color=f"C{k % 10}",
                        label=f"{label} (mean {values.mean():.3f}, n={values.size})")
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("background anchors (all classes)",
                                "foreground anchors (ground-truth class)")):
        ax.set(xlabel="confidence", ylabel="density", title=title, xlim=(0, 1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv=None) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    args = parse_args(argv)
    labels = args.label or [os.path.basename(c) for c in args.config_file]
    cfgs = [load_config(c, args.opts) for c in args.config_file]
    name = args.dataset or (cfgs[0].DATASETS.TEST[0] if cfgs[0].DATASETS.TEST else None)
    if not name:
        raise SystemExit("no dataset: pass --dataset or set DATASETS.TEST")
    results = []
    for cfg, weights, label in zip(cfgs, args.weights, labels):
        if not os.path.isfile(weights):
            raise UserFileNotFoundError(f"weights {weights!r} do not exist")
        dataset = get_dataset(name, build_transforms(cfg, is_train=False), is_train=False)
        fg, bg = collect(cfg, weights, dataset, args.num_images, args.num_background, args.seed)
        print(f"{label}: foreground mean {fg.mean() if fg.size else float('nan'):.4f} "
              f"({fg.size} anchors), background mean {bg.mean():.4f} ({bg.size} scores)")
        results.append((label, fg, bg))
    plot(results, args.output, args.bins)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))

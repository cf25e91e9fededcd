"""The paper's Fig. 4/5: the confidence (sigmoid score) of foreground and background anchors,
before NMS, of trained models on a dataset, and its density plot (tools/plot_score_distribution.py,
tools/compare_losses.py).

The detector's ``classification_scores(images, targets)`` gives what its classification loss
sees: the class scores of every anchor (FCOS: location; the class score without centre-ness) and
the anchor's label from the detector's own matcher. Foreground anchors give the score of their
box's class, background anchors the scores of all classes; ignored anchors are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from drdet.checkpoint import (  # noqa: E402
    CLASSES_KEY,
    check_classes,
    load_checkpoint_file,
    load_model_state,
)
from drdet.modeling import build_detector  # noqa: E402
from drdet.utils.figures import save_figure  # noqa: E402


def anchor_scores(model, image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Scores of one image (3, H, W) in the network's input format, target "boxes"/"labels" in
    its pixels. Returns (foreground (F,): each matched anchor's score of its box's class,
    background (N, C): all class scores of the background anchors)."""
    if not hasattr(model, "classification_scores"):
        raise TypeError(
            f"{type(model).__name__} has no classification_scores(images, targets) method: "
            "the score distribution needs it (see drdet.modeling.RetinaNet)"
        )
    device = model.pixel_mean.device
    target = {"boxes": target["boxes"].to(device), "labels": target["labels"].to(device)}
    scores, labels = model.classification_scores([image.to(device)], [target])
    scores, labels = scores[0], labels[0]
    fg = labels > 0
    foreground = scores[fg].gather(1, (labels[fg] - 1)[:, None])[:, 0]
    return foreground.cpu(), scores[labels == 0].cpu()


def collect(
    cfg, weights: str, dataset, num_images: int, num_background: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(foreground scores, subsampled background scores) of the model over the first
    ``num_images`` images of ``dataset``."""
    model = build_detector(cfg).to(cfg.MODEL.DEVICE).eval()
    data = load_checkpoint_file(weights)
    check_classes(data.get(CLASSES_KEY), weights, cfg, dataset)
    load_model_state(model, data["model"], strict=True)
    generator = torch.Generator().manual_seed(seed)
    count = min(num_images, len(dataset))
    per_image = -(-num_background // count)
    fg_all: list[Tensor] = []
    bg_all: list[Tensor] = []
    for index in range(count):
        image, target, _ = dataset[index]
        fg, bg = anchor_scores(model, image, target)
        bg = bg.flatten()
        if bg.numel() > per_image:
            bg = bg[torch.randperm(bg.numel(), generator=generator)[:per_image]]
        fg_all.append(fg)
        bg_all.append(bg)
    return torch.cat(fg_all).numpy(), torch.cat(bg_all)[:num_background].numpy()


def plot(results: Sequence[tuple[str, np.ndarray, np.ndarray]], output: str, bins: int) -> None:
    """Density of background (left, log scale) and foreground (right) scores per model."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (label, fg, bg) in enumerate(results):
        for ax, values in zip(axes, (bg, fg)):
            if values.size:
                density, _ = np.histogram(values, bins=edges, density=True)
                ax.plot(
                    centres,
                    density,
                    color=f"C{k % 10}",
                    label=f"{label} (mean {values.mean():.3f}, n={values.size})",
                )
    axes[0].set_yscale("log")
    titles = ("background (all classes)", "foreground (ground-truth class)")
    for ax, title in zip(axes, titles):
        ax.set(xlabel="confidence", ylabel="density", title=title, xlim=(0, 1))
    save_figure(fig, axes, output)

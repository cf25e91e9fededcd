"""The last steps every figure of drdet shares (the score distributions, the training curves)."""

import os
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, axes: Iterable, output: str, legend_fontsize: float = 8) -> None:
    """A light grid and, where something is labelled, a legend on each of ``axes``; then ``fig``
    written to ``output`` (100 dpi, its folder made) and closed."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)

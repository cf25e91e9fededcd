"""Training curves: loss and evaluation AP over iterations from runs' metrics.jsonl, as one PNG
(tools/plot_metrics.py, tools/compare_losses.py).

Each run is a metrics.jsonl file or an OUTPUT_DIR holding one. Left panel: every "loss*" key
(loss, loss_cls, loss_reg) against "iteration"; right panel: evaluation AP (records with
"eval/<dataset>": {"AP": ...} written by the trainer, or flat "eval/.../AP" keys), in percent.
A resumed run's records are read in order; a repeated iteration keeps its last value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from drdet.utils.errors import UserFileNotFoundError, UserValueError  # noqa: E402
from drdet.utils.figures import save_figure  # noqa: E402

Series = dict[str, dict[int, float]]  # name -> {iteration: value}


def metrics_path(run: str) -> str:
    path = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"no metrics file {path!r} (a run's OUTPUT_DIR holds one)")
    return path


def read_metrics(path: str, metric: str = "AP") -> tuple[Series, Series]:
    """(losses, evaluations) of one metrics.jsonl: {key: {iteration: value}}; evaluation keys
    are "<dataset>" (the value of ``metric``)."""
    losses: Series = {}
    evals: Series = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserValueError(f"{path}:{line_no}: not a JSON line ({err})") from None
            if "iteration" not in record:
                raise UserValueError(f"{path}:{line_no}: record has no 'iteration' key")
            it = int(record["iteration"])
            for key, value in record.items():
                if key.startswith("loss") and isinstance(value, (int, float)):
                    losses.setdefault(key, {})[it] = float(value)
                elif key.startswith("eval/"):
                    name = key[len("eval/") :]
                    if isinstance(value, dict) and isinstance(value.get(metric), (int, float)):
                        evals.setdefault(name, {})[it] = float(value[metric])
                    elif name.endswith("/" + metric) and isinstance(value, (int, float)):
                        evals.setdefault(name[: -len(metric) - 1] or metric, {})[it] = float(value)
                    elif name == metric and isinstance(value, (int, float)):
                        evals.setdefault(metric, {})[it] = float(value)
    return losses, evals


def plot_runs(
    runs: Sequence[str], labels: Sequence[str] | None, output: str, metric: str = "AP"
) -> list[tuple[Series, Series]]:
    """Writes the figure of ``runs`` to ``output``; returns what each run contributed."""
    labels = list(labels) if labels else list(runs)
    data = [read_metrics(metrics_path(run), metric) for run in runs]
    if not any(losses or evals for losses, evals in data):
        raise UserValueError(f"no loss or evaluation records in {list(runs)}")
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, (label, (losses, evals)) in enumerate(zip(labels, data)):
        colour = f"C{k % 10}"
        for key, styles in zip(sorted(losses), ("-", "--", ":", "-.") * 4):
            its = sorted(losses[key])
            ax_loss.plot(
                its, [losses[key][i] for i in its], styles, color=colour, label=f"{label} {key}"
            )
        for name, marker in zip(sorted(evals), "osd^v<>" * 4):
            its = sorted(evals[name])
            ax_ap.plot(
                its,
                [100 * evals[name][i] for i in its],
                marker=marker,
                color=colour,
                label=f"{label} {name}",
            )
    if not any(evals for _, evals in data):
        ax_ap.text(
            0.5,
            0.5,
            "no evaluation records\n(set TEST.EVAL_PERIOD > 0 when training)",
            ha="center",
            va="center",
            transform=ax_ap.transAxes,
        )
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training losses")
    ax_ap.set(xlabel="iteration", ylabel=f"{metric} (%)", title=f"evaluation {metric}")
    save_figure(fig, (ax_loss, ax_ap), output, legend_fontsize=7)
    return data

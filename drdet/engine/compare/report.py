"""The outputs of a comparison: the figures (the paper's Fig. 4/5 score distributions and the
training curves), the AP tables (runs side by side, or the paper's ablation layout) and
OUTPUT/report.md with OUTPUT/results.json. Results are {run name: {metric: value}}, COCO's
fractions with -1 where the metric is undefined."""

from __future__ import annotations

import json
import os

from drdet.engine.compare.plan import ABLATIONS, METRICS, Comparison, Run
from drdet.engine.compare.runs import result_file
from drdet.engine.compare.seeds import group_runs, plot_seeds, spread_statement, spread_table
from drdet.engine.defaults import load_config

Results = dict[str, dict[str, float]]
SCORES_CAPTION = "Score distributions (paper Fig. 4/5)"
SEEDS_CAPTION = "Every seed's run"
SEED_METRICS = ("AP", "AP50", "AP75")


def percent(value: float) -> str:
    """A COCO metric in percent with one decimal, "n/a" for pycocotools' -1."""
    return f"{100 * value:.1f}" if value >= 0 else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines: the header, the rule, the rows."""
    rule = "|" + "---|" * len(header)
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows]


def metrics_table(runs: list[Run], results: Results) -> list[str]:
    """Markdown AP table, runs side by side; with two runs, the difference (first - second).
    Runs that differ only in their seed are one column: mean [min, max] over the seeds."""
    groups = group_runs(runs)
    if len(groups) < len(runs):
        sizes = {len(g) for g in groups.values()}
        seeds = f"{sizes.pop()} seeds" if len(sizes) == 1 else "seeds"
        header = ["metric"] + [f"{name} (mean [min, max] of {seeds})" for name in groups]
        if len(groups) == 2:
            header.append("{} - {} (means)".format(*groups))
        return _table(header, spread_table(runs, results, METRICS))
    header = ["metric"] + [r.label for r in runs]
    if len(runs) == 2:
        header.append(f"{runs[0].label} - {runs[1].label}")
    rows = []
    for metric in METRICS:
        values = [results[r.name].get(metric, -1.0) for r in runs]
        row = [metric] + [percent(v) for v in values]
        if len(runs) == 2:
            row.append(f"{100 * (values[0] - values[1]):+.1f}" if min(values) >= 0 else "n/a")
        rows.append(row)
    return _table(header, rows)


def ablation_table(name: str, runs: list[Run], results: Results) -> list[str]:
    """The paper's layout: its row labels, its COCO minival AP, then the measured metrics."""
    header = list(ABLATIONS[name]["header"]) + ["paper AP (COCO)"]
    header += [f"{m} (measured)" for m in METRICS]
    rows = []
    for run in runs:
        paper = "-" if run.paper_ap is None else f"{run.paper_ap:.1f}"
        measured = [percent(results[run.name].get(m, -1.0)) for m in METRICS]
        rows.append(list(run.columns.values()) + [paper] + measured)
    return _table(header, rows)


def first_seeds(runs: list[Run]) -> list[Run]:
    """The first run of each group (its first seed): the runs a figure per run shows."""
    return [members[0] for members in group_runs(runs).values()]


def score_figure(comparison: Comparison, output: str) -> None:
    """The paper's Fig. 4/5 for the runs, on the first `score_images` test images."""
    from drdet.data.catalog import get_dataset
    from drdet.data.transforms import build_transforms
    from drdet.engine.score_distribution import collect, plot

    settings = comparison.settings
    results = []
    for run in first_seeds(comparison.runs):
        cfg = load_config(settings.config_file, comparison.run_opts[run.name])
        transforms = build_transforms(cfg, is_train=False)
        dataset = get_dataset(comparison.test_name, transforms, is_train=False)
        weights = os.path.join(comparison.run_dir(run), "model_final.pth")
        fg, bg = collect(cfg, weights, dataset, settings.score_images, 200000, seed=0)
        results.append((run.label, fg, bg))
    plot(results, output, bins=50)


def write_figures(comparison: Comparison, results: Results) -> dict[str, str]:
    """seeds.png (:func:`write_seed_figure`), scores.png and curves.png in the output folder;
    returns {caption: file name} of those written (no score figure for a detector without
    classification_scores' needs)."""
    from drdet.utils.training_curves import plot_runs

    out = comparison.settings.output_dir
    figures = write_seed_figure(comparison, results)
    figures.update({SCORES_CAPTION: "scores.png", "Training curves": "curves.png"})
    try:
        score_figure(comparison, os.path.join(out, "scores.png"))
    except AttributeError as err:  # a detector without anchors and a matcher
        print(f"warning: no score distributions for this detector ({err})")
        del figures[SCORES_CAPTION]
    runs = comparison.runs
    curves = os.path.join(out, "curves.png")
    plot_runs([comparison.run_dir(r) for r in runs], [r.label for r in runs], curves)
    return figures


def schedule_line(comparison: Comparison) -> str:
    """What each run trained on and how long: training set, iterations, batch, lr, steps."""
    run = comparison.runs[0]
    cfg = load_config(comparison.settings.config_file, comparison.run_opts[run.name])
    s = cfg.SOLVER
    return (
        f"Each run trained on `{comparison.train_name}` for {s.MAX_ITER} iterations of "
        f"{s.IMS_PER_BATCH} images (SOLVER.BASE_LR {s.BASE_LR:g}, steps "
        f"{', '.join(map(str, s.STEPS)) or '-'}, warm-up {s.WARMUP_ITERS} iterations)."
    )


def no_detection_notes(comparison: Comparison) -> list[str]:
    """One line per run whose bbox.json on the test set is empty: its 0.0 is no detection."""
    notes = []
    for run in comparison.runs:
        folder = os.path.dirname(result_file(comparison.run_dir(run), comparison.test_name))
        path = os.path.join(folder, "bbox.json")
        if os.path.isfile(path):
            with open(path) as f:
                if not json.load(f):
                    notes.append(
                        f"**{run.label} made no detection** on `{comparison.test_name}` (its "
                        f"bbox.json is empty): its 0.0 means no box above the score threshold, "
                        "not a poor ranking; train longer or lower the threshold."
                    )
    return notes + [""] if notes else []


def write_seed_figure(comparison: Comparison, results: Results) -> dict[str, str]:
    """seeds.png (a point per run, axis from 0) when some runs differ only in their seed;
    returns {caption: file name} of what was written."""
    runs = comparison.runs
    if len(group_runs(runs)) == len(runs):
        return {}
    plot_seeds(
        runs, results, SEED_METRICS, os.path.join(comparison.settings.output_dir, "seeds.png")
    )
    return {SEEDS_CAPTION: "seeds.png"}


def write_report(
    comparison: Comparison, results: Results, figures: dict[str, str], seconds: float
) -> str:
    """Writes report.md (title, settings, the table, the figures) and results.json ({run
    label: metrics}); prints the table; returns the report's path."""
    s, runs, test_name = comparison.settings, comparison.runs, comparison.test_name
    if s.ablation:
        title, table = f"Paper ablation {s.ablation}", ablation_table(s.ablation, runs, results)
    else:
        groups = list(group_runs(runs))
        title, table = " vs ".join(groups), metrics_table(runs, results)
    lines = [
        f"# {title} on {test_name}",
        "",
        f"Config `{s.config_file}`, overrides `{' '.join(s.opts) or '-'}`; each run in "
        f"its own folder under `{s.output_dir}`; COCO metric (%) on `{test_name}`. "
        f"This invocation took {seconds / 60:.1f} min.",
        "",
        schedule_line(comparison),
        "",
        *table,
        "",
        *no_detection_notes(comparison),
    ]
    statement = None if s.ablation else spread_statement(runs, results)
    if statement:
        lines += [statement, ""]
    for caption, file_name in figures.items():
        lines += [f"## {caption}", "", f"![{caption}]({file_name})", ""]
    path = os.path.join(s.output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(s.output_dir, "results.json"), "w") as f:
        json.dump({r.label: results[r.name] for r in runs}, f, indent=1)
    print("\n".join(table + ([statement] if statement else [])))
    return path

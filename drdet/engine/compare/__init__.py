"""Classification losses compared on one detector, data and schedule (tools/compare_losses.py):
plan the runs (plan.py), train and resume them (runs.py), write the tables, figures and report
(report.py). Results are kept per run (by `Run.name`), so a run per (loss, seed) fits in."""

from drdet.engine.compare.plan import (
    ABLATIONS,
    METRICS,
    CompareError,
    Comparison,
    Run,
    Settings,
    check_switchable,
    loss_key_of,
    plan_comparison,
    plan_runs,
    scaled_schedule,
)
from drdet.engine.compare.report import ablation_table, metrics_table, write_figures, write_report
from drdet.engine.compare.runs import Progress, TrainCommand, torchrun_command, train_runs

__all__ = [
    "ABLATIONS",
    "METRICS",
    "CompareError",
    "Comparison",
    "Progress",
    "Run",
    "Settings",
    "TrainCommand",
    "ablation_table",
    "check_switchable",
    "loss_key_of",
    "metrics_table",
    "plan_comparison",
    "plan_runs",
    "scaled_schedule",
    "torchrun_command",
    "train_runs",
    "write_figures",
    "write_report",
]

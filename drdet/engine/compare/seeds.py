"""Runs that differ only in their seed (tools/compare_losses.py --seeds N): each group's mean,
minimum and maximum per metric, whether the difference between two groups is larger than the
spread between their seeds, and a figure with one point per run on an uncropped axis."""

from __future__ import annotations

from dataclasses import dataclass

from drdet.engine.compare.plan import Run

Results = dict[str, dict[str, float]]


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """{group label: its runs}, in the order the groups first appear."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def values(runs: list[Run], results: Results, metric: str) -> list[float] | None:
    """The metric of each run in percent; None when it is undefined (COCO's -1) for any."""
    found = [results[r.name].get(metric, -1.0) for r in runs]
    return None if min(found) < 0 else [100 * v for v in found]


def spread_cell(runs: list[Run], results: Results, metric: str) -> str:
    """ "mean [min, max]" of the group's runs in percent, "n/a" when undefined."""
    found = values(runs, results, metric)
    if found is None:
        return "n/a"
    return f"{sum(found) / len(found):.1f} [{min(found):.1f}, {max(found):.1f}]"


@dataclass
class Verdict:
    """Two groups compared on one metric (percent): the difference of their means, the wider of
    their two ranges (max - min over the seeds), and whether every run of one lies above every
    run of the other."""

    difference: float
    spread: float
    separated: bool

    @property
    def clear(self) -> bool:
        return self.separated and abs(self.difference) > self.spread


def verdict(first: list[float], second: list[float]) -> Verdict:
    difference = sum(first) / len(first) - sum(second) / len(second)
    spread = max(max(first) - min(first), max(second) - min(second))
    separated = min(first) > max(second) or min(second) > max(first)
    return Verdict(difference, spread, separated)


def seeds_needed(first: list[float], second: list[float]) -> int | None:
    """The fewest seeds k (runs 0..k-1 of each group) from which on the verdict stays clear up
    to all the seeds run; None when it is not clear with all of them."""
    needed = None
    for k in range(len(first), 1, -1):
        if not verdict(first[:k], second[:k]).clear:
            break
        needed = k
    return needed


def spread_statement(runs: list[Run], results: Results, metric: str = "AP") -> str | None:
    """A plain sentence: is the difference of the two groups' means larger than the spread
    between seeds, and how many seeds that took. None unless there are two groups of at least
    two runs each."""
    groups = group_runs(runs)
    if len(groups) != 2 or min(len(g) for g in groups.values()) < 2:
        return None
    (name_a, runs_a), (name_b, runs_b) = groups.items()
    a, b = values(runs_a, results, metric), values(runs_b, results, metric)
    if a is None or b is None:
        return f"{metric} is undefined for some run: no verdict."
    v, n = verdict(a, b), min(len(a), len(b))
    # one decimal, or two where one would print the difference and the spread alike
    digits = 1 if f"{abs(v.difference):.1f}" != f"{v.spread:.1f}" else 2
    head = (
        f"{name_a} - {name_b} = {v.difference:+.{digits}f} {metric} (means of {len(a)} and "
        f"{len(b)} seeds); the seeds of one loss spread by up to {v.spread:.{digits}f} {metric}."
    )
    if v.clear:
        winner, loser = (name_a, name_b) if v.difference > 0 else (name_b, name_a)
        k = seeds_needed(a[:n], b[:n])
        took = f" It took {k} seeds per loss to show it." if k else ""
        return (
            f"{head} The difference is larger than that spread, and every {winner} run scored "
            f"above every {loser} run.{took}"
        )
    return (
        f"{head} The difference is not larger than the spread between seeds: with {n} seeds "
        f"per loss this set cannot tell the two apart (more seeds or a longer schedule may)."
    )


def spread_table(runs: list[Run], results: Results, metrics: tuple[str, ...]) -> list[list[str]]:
    """Rows of the seed table: metric, each group's "mean [min, max]", and with two groups the
    difference of their means."""
    groups = group_runs(runs)
    rows = []
    for metric in metrics:
        row = [metric] + [spread_cell(g, results, metric) for g in groups.values()]
        if len(groups) == 2:
            a, b = (values(g, results, metric) for g in groups.values())
            row.append("n/a" if a is None or b is None else f"{verdict(a, b).difference:+.1f}")
        rows.append(row)
    return rows


def plot_seeds(runs: list[Run], results: Results, metrics: tuple[str, ...], output: str) -> None:
    """One panel per metric: a point per run at its group, the group's mean as a bar, the axis
    from 0 so that a small difference looks small."""
    from drdet.utils.figures import plt, save_figure

    groups = group_runs(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        top = 1.0
        for x, members in enumerate(groups.values()):
            found = values(members, results, metric) or []
            if not found:
                continue
            ax.plot([x] * len(found), found, "o", alpha=0.7)
            mean = sum(found) / len(found)
            ax.hlines(mean, x - 0.25, x + 0.25, colors="k", linewidth=2)
            top = max(top, max(found))
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylim(0, top * 1.15)
        ax.set_title(f"{metric} (%), one point per seed, bar = mean", fontsize=9)
    save_figure(fig, axes[0], output)

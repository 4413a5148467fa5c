"""Plots of runs and result tables with matplotlib (Agg: no display needed)."""

from __future__ import annotations

import csv
import json
import pathlib
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = [
    "read_losses",
    "plot_loss_curve",
    "plot_loss_curves",
    "plot_table",
    "plot_training_curve",
    "main_budget",
    "training_curve_cells",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_losses(metrics_jsonl: str | pathlib.Path) -> list[tuple[int, float]]:
    """(step, loss) of every record of a run's metrics.jsonl that has both; ValueError when none has."""
    records = [json.loads(line) for line in pathlib.Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    losses = [(int(r["step"]), float(r["loss"])) for r in records if "loss" in r and "step" in r]
    if not losses:
        raise ValueError(f"{metrics_jsonl} holds no loss values")
    return losses


def plot_loss_curve(metrics_jsonl: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """The training loss (log scale) against the step, from a run's metrics.jsonl."""
    return plot_loss_curves({"": [read_losses(metrics_jsonl)]}, out)


def plot_loss_curves(runs: dict[str, Sequence[Sequence[tuple[int, float]]]], out: str | pathlib.Path) -> pathlib.Path:
    """Training losses (log scale) against the step: for each label the runs' (step, loss) sequences (e.g. the
    seeds of one configuration, read_losses of their metrics.jsonl), drawn in one colour; the label "" draws no
    legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, curves) in enumerate(runs.items()):
        for j, curve in enumerate(curves):
            steps, losses = zip(*curve)
            ax.plot(steps, losses, color=f"C{i % 10}", alpha=0.8, label=label if label and j == 0 else None)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    if any(runs):
        ax.legend(fontsize="small")
    return _save(fig, plt, out)


def plot_table(table_csv: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Frechet distance against sampler steps (both axes log scale) from a results CSV (run.py table / study): one
    panel per sampler, one line per (sde, noise, loss) in the same colour in every panel. A point is the mean over
    the seeds, its bar the Student-t 95% interval of that mean (one seed: the cell's bootstrap interval fd_lo ..
    fd_hi); the grey band is the real-data floor (mean +- sd) where the CSV has it (docs/math.md §10). Budgets are
    not mixed: of a CSV with several train_steps values only the rows of the most common one (main_budget) are
    drawn, and the title says which."""
    rows = _read_results(table_csv)
    budget, budgets = main_budget(rows)
    rows = [r for r in rows if (r.get("train_steps") or "") == budget]
    panels: dict[str, dict[tuple, dict[int, list[dict]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        panels[r["sampler"]][(r["sde"], r["noise"], r["loss"])][int(r["steps"])].append(r)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (sampler, lines) in zip(axes[0], sorted(panels.items())):
        _draw(ax, rows, lines)
        ax.set(xlabel="sampler steps", xscale="log", yscale="log",
               title=sampler + (f", {budget} training steps" if budget else ""))  # fmt: skip
        _plain_numbers(ax.yaxis)
        ticks = sorted({s for cells in lines.values() for s in cells})
        ax.set_xticks(ticks, [str(s) for s in ticks])
        ax.minorticks_off()
    axes[0][0].set_ylabel("Frechet distance")
    if len(budgets) > 1:
        fig.suptitle(f"train_steps = {budget}, the most common of the budgets {', '.join(b or '?' for b in budgets)}")
    return _save(fig, plt, out)


def plot_training_curve(table_csv: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Frechet distance against the training budget (train_steps, linear; FD on a log axis) from a study's CSV: one
    panel per (sampler, steps) cell with two or more budgets (training_curve_cells), one line per (sde, noise, loss)
    that has two or more budgets there, drawn over the seeds it has at every budget (a paired curve); points, bars,
    colours and the floor band as in plot_table. ValueError when no cell has two budgets."""
    rows = _read_results(table_csv)
    cells = training_curve_cells(rows)
    if not cells:
        raise ValueError(f"{table_csv} has no (sampler, steps) cell with two or more train_steps values")
    panels: dict[tuple, dict[tuple, dict[int, list[dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        if (r["sampler"], int(r["steps"])) in cells and r.get("train_steps"):
            panels[r["sampler"], int(r["steps"])][(r["sde"], r["noise"], r["loss"])][int(r["train_steps"])].append(r)
    for lines in panels.values():
        for name in [n for n, by_budget in lines.items() if len(by_budget) < 2]:
            del lines[name]
        for by_budget in lines.values():
            common = set.intersection(*({r["seed"] for r in seeds} for seeds in by_budget.values()))
            for budget, seeds in by_budget.items():
                by_budget[budget] = [r for r in seeds if r["seed"] in common]
    plt = _pyplot()
    cols = min(4, len(cells))
    grid_rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(5.5 * cols, 4.2 * grid_rows), squeeze=False)
    for ax, (sampler, steps) in zip(axes.flat, cells):
        lines = panels[sampler, steps]
        _draw(ax, rows, lines)
        ax.set(xlabel="training steps", yscale="log", title=f"{sampler}, {steps} sampler steps")
        _plain_numbers(ax.yaxis)
        ticks = sorted({b for budgets in lines.values() for b in budgets})
        ax.set_xticks(ticks, [str(b) for b in ticks])
    for ax in axes.flat[len(cells) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("Frechet distance")
    return _save(fig, plt, out)


def main_budget(rows: list[dict]) -> tuple[str, list[str]]:
    """(the most common train_steps of results rows (a tie: the largest), all of them in increasing order); ""
    stands for rows without the column (a CSV older than it)."""
    counts = Counter(r.get("train_steps") or "" for r in rows)
    budgets = sorted(counts, key=lambda b: int(b) if b else -1)
    return max(reversed(budgets), key=counts.__getitem__), budgets


def training_curve_cells(rows: list[dict]) -> list[tuple[str, int]]:
    """The (sampler, steps) cells of results rows with two or more distinct train_steps values, sorted."""
    budgets = defaultdict(set)
    for r in rows:
        if r.get("train_steps"):
            budgets[r["sampler"], int(r["steps"])].add(int(r["train_steps"]))
    return sorted(cell for cell, found in budgets.items() if len(found) >= 2)


def _read_results(table_csv: str | pathlib.Path) -> list[dict]:
    with open(table_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"sde", "noise", "loss", "sampler", "steps", "fd", "fd_lo", "fd_hi"} <= set(rows[0]):
        raise ValueError(f"{table_csv} is not a results CSV (columns sde, noise, loss, sampler, steps, fd, ...)")
    return rows


def _draw(ax, rows: list[dict], lines: dict[tuple, dict[int, list[dict]]]) -> None:
    """The floor band of `rows` and one line per (sde, noise, loss) of `lines` ({x: the seeds' rows}) on ax, its
    colour fixed by the configuration's place among all of `rows`' configurations."""
    floors = [(float(r["floor_fd"]), float(r["floor_sd"])) for r in rows if r.get("floor_fd")]
    if floors:
        mean, sd = np.mean(floors, axis=0)
        ax.axhspan(mean - sd, mean + sd, color="0.85", label="real-data floor")
    configurations = sorted({(r["sde"], r["noise"], r["loss"]) for r in rows})
    for name, cells in sorted(lines.items()):
        xs = sorted(cells)
        points = [_mean_and_bar(cells[x]) for x in xs]
        y = np.array([p[0] for p in points])
        err = np.array([[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]])
        seeds = max(len(cells[x]) for x in xs)
        ax.errorbar(xs, y, yerr=err, marker="o", capsize=3, color=f"C{configurations.index(name) % 10}",
                    label=f"{' '.join(name)} ({seeds} seed{'s' if seeds > 1 else ''})")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _plain_numbers(axis) -> None:
    """Ticks of a log axis at 1, 2, 5 x 10^k inside its range, labelled as plain numbers (12, not 1.2 x 10^1)."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    lo, hi = sorted(axis.get_view_interval())
    ticks = [m * 10.0**e for e in range(-3, 7) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_locator(NullLocator())


def _mean_and_bar(cells: list[dict]) -> tuple[float, float, float]:
    """(mean fd over the seeds, interval): Student t over seeds, or the one cell's bootstrap interval."""
    from .stats import mean_interval

    values = [float(r["fd"]) for r in cells]
    if len(values) > 1:
        return tuple(mean_interval(values))
    lo, hi = cells[0]["fd_lo"], cells[0]["fd_hi"]
    return (values[0], float(lo), float(hi)) if lo and hi else (values[0], values[0], values[0])


def _save(fig, plt, out: str | pathlib.Path) -> pathlib.Path:
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

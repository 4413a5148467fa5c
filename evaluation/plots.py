"""Plots of runs and result tables with matplotlib (Agg: no display needed)."""

from __future__ import annotations

import csv
import json
import pathlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = ["plot_loss_curve", "plot_loss_curves", "plot_table"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(metrics_jsonl: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """The training loss (log scale) against the step, from a run's metrics.jsonl."""
    return plot_loss_curves({"": [metrics_jsonl]}, out)


def plot_loss_curves(runs: dict[str, Sequence[str | pathlib.Path]], out: str | pathlib.Path) -> pathlib.Path:
    """Training losses (log scale) against the step: for each label the runs' metrics.jsonl files (e.g. the
    seeds of one configuration), drawn in one colour; the label "" draws no legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, files) in enumerate(runs.items()):
        for j, path in enumerate(files):
            rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
            rows = [r for r in rows if "loss" in r and "step" in r]
            if not rows:
                raise ValueError(f"{path} holds no loss values")
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=f"C{i % 10}", alpha=0.8,
                    label=label if label and j == 0 else None)  # fmt: skip
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    if any(runs):
        ax.legend(fontsize="small")
    return _save(fig, plt, out)


def plot_table(table_csv: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Frechet distance against sampler steps (log scale) from a results CSV (run.py table / study): one panel per
    sampler, one line per (sde, noise, loss). A point is the mean over the seeds, its bar the Student-t 95%
    interval of that mean (one seed: the cell's bootstrap interval fd_lo .. fd_hi); the grey band is the real-data
    floor (mean +- sd) where the CSV has it (docs/math.md §10)."""
    with open(table_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"sde", "noise", "loss", "sampler", "steps", "fd", "fd_lo", "fd_hi"} <= set(rows[0]):
        raise ValueError(f"{table_csv} is not a results CSV (columns sde, noise, loss, sampler, steps, fd, ...)")
    panels: dict[str, dict[tuple, dict[int, list[dict]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        panels[r["sampler"]][(r["sde"], r["noise"], r["loss"])][int(r["steps"])].append(r)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (sampler, lines) in zip(axes[0], sorted(panels.items())):
        floors = [(float(r["floor_fd"]), float(r["floor_sd"])) for r in rows if r.get("floor_fd")]
        if floors:
            mean, sd = np.mean(floors, axis=0)
            ax.axhspan(mean - sd, mean + sd, color="0.85", label="real-data floor")
        for i, (name, cells) in enumerate(sorted(lines.items())):
            steps = sorted(cells)
            points = [_mean_and_bar(cells[s]) for s in steps]
            y = np.array([p[0] for p in points])
            err = np.array([[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]])
            seeds = max(len(cells[s]) for s in steps)
            ax.errorbar(steps, y, yerr=err, marker="o", capsize=3, color=f"C{i % 10}",
                        label=f"{' '.join(name)} ({seeds} seed{'s' if seeds > 1 else ''})")  # fmt: skip
        ax.set(xlabel="sampler steps", xscale="log", title=sampler)
        ticks = sorted({s for cells in lines.values() for s in cells})
        ax.set_xticks(ticks, [str(s) for s in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("Frechet distance")
    return _save(fig, plt, out)


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

"""Plots of runs and result tables with matplotlib (Agg: no display needed)."""

from __future__ import annotations

import csv
import json
import pathlib
from collections import defaultdict

__all__ = ["plot_loss_curve", "plot_table"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(metrics_jsonl: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """The training loss (log scale) against the step, from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in pathlib.Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    if not rows:
        raise ValueError(f"{metrics_jsonl} holds no loss values")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    return _save(fig, plt, out)


def plot_table(table_csv: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Frechet distance against sampler steps (log scale), one line per (SDE, sampler), from a table CSV with the
    columns sde, sampler, steps, fid."""
    with open(table_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"sde", "sampler", "steps", "fid"} <= set(rows[0]):
        raise ValueError(f"{table_csv} is not a table CSV (columns sde, sampler, steps, fid)")
    lines = defaultdict(list)
    for r in rows:
        lines[(r["sde"], r["sampler"])].append((int(r["steps"]), float(r["fid"])))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (sde, sampler), points in sorted(lines.items()):
        points.sort()
        ax.plot(*zip(*points), marker="o", label=f"{sde} {sampler}")
    ax.set(xlabel="sampler steps", ylabel="Frechet distance", xscale="log", title="quality against steps")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, out)


def _save(fig, plt, out: str | pathlib.Path) -> pathlib.Path:
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""The cost model of `run.py study --plan`, and the share of the models each worker takes.

The constants are one-thread seconds of the digits network (16.2M multiply-accumulates per image) on the project's
2-core machine while it was shared with other jobs; another network scales the per-image parts by its
multiply-accumulates. They estimate CPU time on one core per worker, not GPU time.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch

from training.checkpoint import list_checkpoints

from .config import train_config
from .grid import Cell, Grid, Model

__all__ = ["ModelCost", "estimate", "assign", "plan_text", "trained_steps"]

DIGITS_MACS = 16.2e6  # forward multiply-accumulates per 8x8 image (benchmarks/RESULTS.md, Models)
# Measured in the digits study's own log (runs/digits_study/study.log and the worker logs: two one-thread workers
# on the otherwise quiet 2-core machine). A training step: 0.03 s + 1.05 ms per image, 0.16 s at batch 128 (2000
# steps in 300-330 s; 380 s while a third process ran). The earlier constants (0.08 s + 2.1 ms, 0.7 ms an
# evaluation, 0.3 s a bits/dim image) were measured beside test runs and over-estimated the study about 2x.
TRAIN_STEP_S, TRAIN_IMAGE_S = 0.03, 1.05e-3
# One network evaluation of one image in a sampling batch of 500: 0.33 ms (ddpm 100 steps x 1000 images in 32 s).
EVAL_IMAGE_S = 3.3e-4
# Bits/dim of one digit (probability-flow ODE, rtol = atol = 1e-3, all 360 test digits in one batch: 17 s).
BPD_IMAGE_S = 0.05
# Scoring a cell: features, Frechet distance, its 200 bootstrap resamples, precision / recall (1-2 s at n = 1000).
CELL_S = 3.0


@dataclass
class ModelCost:
    """Estimated seconds of a model: training, bits/dim and each cell (sampling and scoring)."""

    train_s: float
    bpd_s: float
    cells: dict[Cell, float]

    @property
    def total(self) -> float:
        """All of the model's seconds."""
        return self.train_s + self.bpd_s + sum(self.cells.values())


def _scale(grid: Grid) -> float:
    """Forward multiply-accumulates per image of the grid's network over the digits network's."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.build import build_model

    model = build_model(train_config(grid.base, grid.out)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *grid.image_shape), torch.full((1,), 0.5))
    return counter.get_total_flops() / 2 / DIGITS_MACS


def estimate(grid: Grid) -> dict[Model, ModelCost]:
    """The cost of every model of the grid, all of its work counted (done or not)."""
    scale = _scale(grid)
    batch = grid.base.training.batch_size
    step_s = TRAIN_STEP_S + TRAIN_IMAGE_S * batch * scale
    return {
        model: ModelCost(
            train_s=model.train_steps * step_s,
            bpd_s=0.0 if model.noise.dc == "zero" else grid.bpd_images * BPD_IMAGE_S * scale,  # no density at dc=zero
            cells={
                c: grid.n * grid.nfe(model.sde, model.noise, c.sampler, c.steps) * EVAL_IMAGE_S * scale + CELL_S
                for c in grid.cells_of(model)
            },  # fmt: skip
        )
        for model in grid.models
    }


def assign(costs: dict[Model, ModelCost], workers: int) -> dict[Model, int]:
    """Worker 0..workers-1 of each model: the longest first, each to the least loaded worker (ties: the lower
    index). It depends on the grid alone, so every worker of a study computes the same shares."""
    load = [0.0] * workers
    share = {}
    for model in sorted(costs, key=lambda m: -costs[m].total):  # sorted is stable: file order among equals
        k = min(range(workers), key=lambda i: (load[i], i))
        share[model] = k
        load[k] += costs[model].total
    return share


def trained_steps(run_dir: pathlib.Path) -> int:
    """The step of a run's newest checkpoint (0 without one)."""
    found = list_checkpoints(run_dir)
    return int(found[-1].stem.removeprefix("ckpt_")) if found else 0


def _remaining(grid: Grid, model: Model, cost: ModelCost, done: set) -> tuple[float, float, float]:
    """(training, bits/dim, cells) seconds still to run."""
    left = max(0, model.train_steps - trained_steps(grid.run_dir(model)))
    bpd = 0.0 if (grid.run_dir(model) / "bpd.npz").is_file() else cost.bpd_s
    return cost.train_s * left / model.train_steps, bpd, sum(s for c, s in cost.cells.items() if c.key not in done)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def plan_text(grid: Grid, costs: dict[Model, ModelCost], done: set, workers: int) -> str:
    """The plan: every model and cell with its estimated seconds, what is done, the totals and the wall time."""
    share = assign(costs, workers)
    sigma = "from the data" if grid.sigma_max is None else f"{grid.sigma_max:g}"
    budgets = sorted({model.train_steps for model in costs})
    lines = [
        f"study {grid.path}: {len(costs)} models, {len(grid.cells)} cells -> {grid.out / 'study.csv'}",
        f"n = {grid.n} samples per cell, {', '.join(map(str, budgets))} training steps"
        + (" by model" if len(budgets) > 1 else "")
        + f" (batch {grid.base.training.batch_size}), "
        + (f"bits/dim of {grid.bpd_images} test digits" if grid.bpd_images else "no bits/dim")
        + f", sigma_max of ve / nive {sigma}",
        "",
        f"{'model / cell':<46}{'train s':>9}{'bpd s':>8}{'nfe':>7}{'sample s':>10}  worker / status",
    ]
    totals, left = [0.0, 0.0, 0.0], _shares(grid, costs, done, workers)
    for model, cost in costs.items():
        for i, value in enumerate((cost.train_s, cost.bpd_s, sum(cost.cells.values()))):
            totals[i] += value
        status = "" if sum(_remaining(grid, model, cost, done)) else " done"
        lines.append(f"{model.name:<46}{cost.train_s:>9.0f}{cost.bpd_s:>8.0f}{'':>7}{sum(cost.cells.values()):>10.0f}"
                     f"  {share[model] + 1}/{workers}{status}")  # fmt: skip
        for cell, seconds in cost.cells.items():
            label = f"  {cell.sampler} {cell.steps}"
            nfe = grid.nfe(model.sde, model.noise, cell.sampler, cell.steps)
            lines.append(f"{label:<46}{'':>17}{nfe:>7}{seconds:>10.0f}  " + ("done" if cell.key in done else ""))
    total = sum(totals)
    lines += [
        "",
        f"estimated CPU time: {_hours(total)} (training {_hours(totals[0])}, bits/dim {_hours(totals[1])}, sampling "
        f"and scoring {_hours(totals[2])}); left to do: {_hours(sum(left))}",
        f"wall time, one thread per worker: {_hours(max(left))} with {workers} worker{'s' * (workers > 1)} "
        f"(shares {', '.join(_hours(x) for x in left)})"
        + (f"; {_hours(max(_shares(grid, costs, done, 2)))} with 2" if workers == 1 else ""),
        f"cost model (nidiff_cli/plan.py): {TRAIN_STEP_S:g} s + {TRAIN_IMAGE_S * 1e3:g} ms x batch a training step, "
        f"{EVAL_IMAGE_S * 1e3:g} ms a network evaluation of one image, {BPD_IMAGE_S:g} s bits/dim of one image, "
        f"{CELL_S:g} s scoring a cell; digits network, one thread on a shared 2-core CPU",
    ]
    return "\n".join(lines)


def _shares(grid: Grid, costs: dict[Model, ModelCost], done: set, workers: int) -> list[float]:
    """Seconds left to each of `workers` workers."""
    share, left = assign(costs, workers), [0.0] * workers
    for model, cost in costs.items():
        left[share[model]] += sum(_remaining(grid, model, cost, done))
    return left

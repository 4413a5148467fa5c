"""`run.py study GRID.toml`: a declared grid of models x samplers x steps x seeds, one CSV row per cell.

Each model (sde, noise, loss, seed, train_steps) is trained once, for its budget of train_steps optimiser steps,
in <out>/models/<name> (training.train: resumed from its checkpoints; each budget is a run of its own, trained from
scratch), then scored: bits/dim of the held-out test digits (every image's value in the model's bpd.npz), and for
each of its cells n samples against the 360 held-out test digits in the digits classifier's feature space,
with the Frechet distance's bootstrap interval and the real-data floor (docs/math.md §10). A finished row is
appended to <out>/study.csv at once (locked, flushed); a rerun skips the rows there and the models already trained,
so a stopped study continues where it stopped. `--workers N` runs N processes (one thread each), each taking a
fixed share of the models (nidiff_cli.plan.assign) and appending to the same CSV; `--shard K/N` runs one share.
<out>/study.log records each training call (JSON lines: model, steps from and to, seconds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

import evaluation
from evaluation.plots import (
    main_budget,
    plot_loss_curves,
    plot_table,
    plot_training_curve,
    read_losses,
    training_curve_cells,
)
from samplers.progress import progress
from training import load_model, train
from training.build import data_sigma_max

from .common import (
    EXIT_INTERRUPTED,
    Interrupted,
    UsageError,
    check_device,
    interruptible,
    limit_cpu_threads,
    positive_int,
    provenance,
    read_run_config,
    write_config,
)
from .config import Config, dump_toml, train_config
from .grid import VE_FAMILY, Grid, Model, load_grid
from .likelihood import bits_per_dim
from .main_job import BPD_TOL
from .plan import assign, estimate, plan_text, trained_steps
from .results import append_row, cell_row, digits_scores, read_rows, row_key
from .runs import data_split, digits_metric
from .sampling import draw

CSV, LOG, BPD = "study.csv", "study.log", "bpd.npz"
# Test hook: the process sends itself SIGTERM after training this many models (a study killed mid-way).
STOP_AFTER_ENV = "NIDIFF_STUDY_STOP_AFTER_MODELS"
POLL_S = 5.0  # how often --workers reads the CSV for its progress bar
METRIC_SEED = 0  # the digits classifier and the floor's draws: one feature space and floor for every cell


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="a grid of models x samplers x steps x seeds -> one CSV row per cell (resumable)")
    p.description = (
        "Run the grid of GRID.toml: train each model once, then sample and score each of its cells into "
        "<out>/study.csv (Frechet distance with its bootstrap interval, the real-data floor, precision, recall, "
        "bits/dim). A rerun continues a stopped study; --plan prints the cells and their estimated CPU time."
    )
    p.add_argument("grid", type=pathlib.Path, help="the grid file (TOML; README, Study)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="output directory; none: the grid's `out`, else runs/<grid file name>")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="print the cells and their estimated CPU time; run nothing")
    p.add_argument("--plots", action="store_true",
                   help="fd_vs_steps.png, fd_vs_training.png (where a cell has several train_steps), "
                        "loss_curves.png and summary.md from the CSV; run nothing")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1, help="processes of one thread, each with its share")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N", help="run share K of N (one of --workers N)")
    p.add_argument("--device", type=str, default=None, help="torch device; none: the grid's [config]")


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(k), int(n)


def run(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid, args.out)
    if args.device is not None:
        grid.base.device = check_device(args.device)
    csv_path = grid.out / CSV
    if args.plots:
        return plots(grid, csv_path)
    if args.plan:
        print(plan_text(grid, estimate(grid), {row_key(r) for r in read_rows(csv_path)}, args.workers))
        return 0
    if args.shard is not None and args.workers > 1:
        raise UsageError("give --workers N (all shares) or --shard K/N (one share), not both")
    if args.workers > 1:
        return run_workers(args, grid, csv_path)
    k, count = args.shard or (1, 1)
    return run_share(grid, csv_path, k - 1, count)


@dataclass
class _Share:
    """What one process of a study holds: the metric, the floor, the CSV and what is done."""

    grid: Grid
    csv_path: pathlib.Path
    metric: evaluation.DigitsMetric
    test_pixels: Tensor
    levels: int
    floor: evaluation.RealFloor
    origin: dict
    done: set
    label: str
    trained: int = 0


def run_share(grid: Grid, csv_path: pathlib.Path, k: int, count: int) -> int:
    """Train and score the models of share k (0-based) of `count`; SIGINT / SIGTERM stop it cleanly (exit 130 /
    0): the finished rows are in the CSV and training has saved a checkpoint."""
    limit_cpu_threads(grid.base.device)
    read_rows(csv_path, repair=True)  # a row cut short by a killed process is dropped
    share = assign(estimate(grid), count)
    metric, test_set = digits_metric(grid.out, METRIC_SEED)
    state = _Share(grid, csv_path, metric, test_set.pixels, test_set.levels, metric.real_floor(grid.n, METRIC_SEED),
                   provenance(grid.base), {row_key(r) for r in read_rows(csv_path)}, f"{k + 1}/{count}")  # fmt: skip
    mine = [m for m in grid.models if share[m] == k and any(c.key not in state.done for c in grid.cells_of(m))]
    with interruptible():
        try:
            for model in progress(mine, desc=f"models of share {state.label}", unit="model"):
                _study(state, model)
        except Interrupted as err:
            print(f"interrupted by {err.signal_name}; the finished rows are in {csv_path}: run the same command to "
                  "continue")  # fmt: skip
            return EXIT_INTERRUPTED if err.signal_name == "SIGINT" else 0
    print(f"share {state.label} done: {len(read_rows(csv_path))} of {len(grid.cells)} cells in {csv_path}")
    return 0


def model_config(grid: Grid, model: Model) -> Config:
    """The model's configuration: the grid's, with sigma_max of ve / nive from the data (docs/math.md §E.8) when
    the grid says so (the run's own config.toml keeps the value once computed). A run made with another
    configuration is refused."""
    cfg, run_dir = grid.config(model), grid.run_dir(model)
    own = read_run_config(run_dir)
    if model.sde in VE_FAMILY and grid.sigma_max is None:
        cfg.sde.sigma_max = (
            own.sde.sigma_max if own is not None
            else data_sigma_max(train_config(cfg, run_dir), data_split(cfg.data.dataset, cfg.data.root, "train"))
        )  # fmt: skip
    if own is not None:
        own.device = cfg.device  # a study may move to another device
        mine, theirs = set(dump_toml(cfg).splitlines()), set(dump_toml(own).splitlines())
        if mine != theirs:
            raise UsageError(f"{run_dir} was made with another configuration (the grid gives {sorted(mine - theirs)}, "
                             f"the run has {sorted(theirs - mine)}); give the study another --out")  # fmt: skip
    return cfg


def _study(state: _Share, model: Model) -> None:
    """Train the model if it is not, its bits/dim if not measured, then every cell not in the CSV."""
    grid = state.grid
    cfg, run_dir = model_config(grid, model), grid.run_dir(model)
    write_config(cfg, run_dir)
    start = trained_steps(run_dir)
    if start < model.train_steps:
        result = train(train_config(cfg, run_dir), progress=True)
        _log(grid.out, {"event": "train", "model": model.name, "from": result["start_step"], "to": result["step"],
                        "seconds": round(result["seconds"], 1), "share": state.label})  # fmt: skip
        if result["stopped_by"]:
            raise Interrupted(result["stopped_by"])
        state.trained += 1
        if os.environ.get(STOP_AFTER_ENV) == str(state.trained):
            os.kill(os.getpid(), signal.SIGTERM)
    net, sde, run_cfg = load_model(run_dir, ema=True, device=cfg.device)
    bpd = _bits_per_dim(state, net, sde, run_cfg, cfg, run_dir / BPD)
    for cell in grid.cells_of(model):
        if cell.key in state.done:
            continue
        cell_cfg = grid.cell_config(cell)
        x, nfe, stopped = draw(net, sde, run_cfg, cell_cfg)
        if stopped:
            raise Interrupted(stopped)
        row = cell_row(cell_cfg, nfe, len(x), digits_scores(state.metric, x, state.floor), state.origin, bpd)
        append_row(state.csv_path, row)
        state.done.add(cell.key)
        tqdm.write(f"{model.name} {cell.sampler} {cell.steps}: fd {row['fd']:.2f} [{row['fd_lo']:.2f}, "
                   f"{row['fd_hi']:.2f}], floor {row['floor_fd']:.2f}")  # fmt: skip


def _bits_per_dim(state: _Share, net, sde, run_cfg, cfg: Config, path: pathlib.Path) -> float | None:
    """Mean bits/dim of the grid's test digits; every image's value is kept in `path` (computed once). None when
    not asked for, or for a singular Sigma (dc="zero": the image mean is never noised, so there is no density)."""
    if not state.grid.bpd_images or sde.cov.is_singular:
        return None
    if path.is_file():
        with np.load(path) as stored:
            return float(stored["bpd"].mean())
    pixels = state.test_pixels[: state.grid.bpd_images]
    result, stopped = bits_per_dim(net, sde, run_cfg, cfg, pixels, state.levels, divergence="rademacher",
                                   rtol=BPD_TOL, atol=BPD_TOL)  # fmt: skip
    if stopped:
        raise Interrupted(stopped)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, bpd=np.asarray(result["per_image"]), test_index=np.arange(len(pixels)), nfe=result["nfe"],
                 rtol=BPD_TOL, levels=state.levels, seed=cfg.seed)  # fmt: skip
    os.replace(tmp, path)
    return float(result["mean"])


def _log(out: pathlib.Path, event: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **event}) + "\n")


def run_workers(args: argparse.Namespace, grid: Grid, csv_path: pathlib.Path) -> int:
    """--workers N: N processes `python -m nidiff_cli study GRID --shard K/N`, their output in <out>/logs/; a
    progress bar counts the CSV's rows. The classifier of the metric is trained first, once."""
    digits_metric(grid.out, METRIC_SEED)
    read_rows(csv_path, repair=True)
    logs = grid.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    procs = []
    for k in range(1, args.workers + 1):
        cmd = [sys.executable, "-m", "nidiff_cli", "study", str(grid.path), "--out", str(grid.out), "--shard",
               f"{k}/{args.workers}", *(["--device", grid.base.device] if args.device else [])]  # fmt: skip
        with open(logs / f"worker-{k}.log", "a") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    print(f"{args.workers} workers started; their output is in {logs}/worker-K.log")
    bar = progress(total=len(grid.cells), initial=len(read_rows(csv_path)), desc="cells", unit="cell")
    with interruptible(), bar:
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(POLL_S)
                bar.update(len(read_rows(csv_path)) - bar.n)
        except Interrupted as err:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)  # each worker saves its checkpoint and stops
            for p in procs:
                p.wait()
            print(f"interrupted by {err.signal_name}; run the same command to continue")
            return EXIT_INTERRUPTED if err.signal_name == "SIGINT" else 0
    failed = [(k, p.returncode) for k, p in enumerate(procs, 1) if p.returncode not in (0, EXIT_INTERRUPTED)]
    for k, code in failed:
        sys.stderr.write(f"worker {k} exited with code {code}; see {logs / f'worker-{k}.log'}\n")
    print(f"{len(read_rows(csv_path))} of {len(grid.cells)} cells in {csv_path}")
    return 1 if failed else 0


def keep_losses(grid: Grid) -> dict[str, list[tuple[int, float]]]:
    """{model name: its (step, loss) curve} of <out>/losses.csv (columns model, step, loss), updated from the run
    directories present: the curves outlive the run directories (keep the CSV with the study's)."""
    path = grid.out / "losses.csv"
    losses = defaultdict(list)
    if path.is_file():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                losses[r["model"]].append((int(r["step"]), float(r["loss"])))
    for model in grid.models:
        metrics = grid.run_dir(model) / "metrics.jsonl"
        if metrics.is_file():
            losses[model.name] = read_losses(metrics)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["model", "step", "loss"])
        out.writerows([name, step, f"{loss:.6g}"] for name, curve in sorted(losses.items()) for step, loss in curve)
    return dict(losses)


def plots(grid: Grid, csv_path: pathlib.Path) -> int:
    """fd_vs_steps.png (evaluation.plots.plot_table), fd_vs_training.png (plot_training_curve; only where a cell
    has two or more budgets), loss_curves.png (the models' losses, one colour per configuration and budget, from
    keep_losses) and summary.md (evaluation.report.study_summary, of the most common budget's rows) in the output
    directory."""
    rows = read_rows(csv_path)
    if not rows:
        raise UsageError(f"{csv_path} holds no rows yet: run the study first")
    losses = keep_losses(grid)
    curves = defaultdict(list)
    for model in grid.models:
        if model.name in losses:
            curves[f"{model.sde} {model.noise} {model.loss} {model.train_steps} steps"].append(losses[model.name])
    written = [plot_table(csv_path, grid.out / "fd_vs_steps.png")]
    if training_curve_cells(rows):
        written.append(plot_training_curve(csv_path, grid.out / "fd_vs_training.png"))
    if curves:
        written.append(plot_loss_curves(curves, grid.out / "loss_curves.png"))
    summary = grid.out / "summary.md"
    budget, budgets = main_budget(rows)
    note = f"Rows of train_steps = {budget}, the most common of the budgets {', '.join(budgets)}.\n\n"
    rows = [r for r in rows if r["train_steps"] == budget]
    table = evaluation.study_summary(rows, grid.configurations, grid.baselines)
    summary.write_text((note if len(budgets) > 1 else "") + table + "\n")
    print("wrote " + ", ".join(str(p) for p in [*written, summary]))
    return 0

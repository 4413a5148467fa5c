"""`run.py plot`: PNGs of a run's loss curve and of a table's Frechet distance against steps (matplotlib)."""

from __future__ import annotations

import argparse
import pathlib

from evaluation.plots import plot_loss_curve, plot_table

from .common import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="loss curve of a run (--workdir) and/or quality against steps (--table CSV)")
    p.add_argument("--workdir", type=pathlib.Path, default=None, help="run directory with metrics.jsonl")
    p.add_argument("--table", type=pathlib.Path, default=None, help="a table CSV (run.py table)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="output directory (default: next to the input)")


def run(args: argparse.Namespace) -> int:
    if args.workdir is None and args.table is None:
        raise UsageError("give --workdir (a run's loss curve) and/or --table CSV (quality against steps)")
    written = []
    if args.workdir is not None:
        metrics = args.workdir / "metrics.jsonl"
        if not metrics.is_file():
            raise UsageError(f"{str(metrics)!r} does not exist (a run directory has one once training logged)")
        written.append(plot_loss_curve(metrics, (args.out or args.workdir) / "loss.png"))
    if args.table is not None:
        if not args.table.is_file():
            raise UsageError(f"--table {str(args.table)!r} does not exist")
        written.append(plot_table(args.table, (args.out or args.table.parent) / f"{args.table.stem}.png"))
    print("plots " + ", ".join(str(p) for p in written))
    return 0

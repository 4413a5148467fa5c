"""`run.py export`: the EMA weights of a run as one .safetensors file, the config in its metadata."""

from __future__ import annotations

import argparse
import pathlib

from training import export_weights

from .common import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's EMA weights (and config) as a .safetensors file")
    p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/digits_nivp"),
                   help="run directory (its newest readable checkpoint), or a checkpoint file")  # fmt: skip
    p.add_argument("--out", type=pathlib.Path, required=True, help="the .safetensors file to write")


def run(args: argparse.Namespace) -> int:
    if not args.workdir.exists():
        raise UsageError(f"{str(args.workdir)!r} does not exist (train a model first: python run.py train ...)")
    path = export_weights(args.workdir, args.out)
    print(f"weights {path} ({path.stat().st_size / 2**20:.1f} MiB); use it as --checkpoint or train --init-from")
    return 0

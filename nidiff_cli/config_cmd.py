"""`run.py config`: print the resolved configuration tree as TOML (what a run with the same flags would use)."""

from __future__ import annotations

import argparse

from .common import add_common, read_run_config, resolve_config
from .config import dump_toml
from .flags import add_data, add_experiment, add_sampling


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print the resolved configuration (preset or TOML file, flags, --set) as TOML")
    add_common(p, "a run directory whose config.toml is the base")
    add_data(p)
    add_experiment(p)
    add_sampling(p)


def run(args: argparse.Namespace) -> int:
    own = read_run_config(args.workdir) if args.workdir is not None else None
    print(dump_toml(resolve_config(args, own)), end="")
    return 0

"""`run.py train`: train or resume a model (DDP under torchrun); SIGINT / SIGTERM save a checkpoint and stop."""

from __future__ import annotations

import argparse
import os
import pathlib
import time

from training import train

from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_common,
    add_setting,
    non_negative_int,
    positive_int,
    resolve_run,
    write_config,
)
from .config import train_config
from .flags import add_data, add_experiment
from .runs import check_data_args, data_split


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train or resume a model (torchrun for several processes)")
    add_common(p, "run directory (default: runs/<dataset>_<sde>[...]); an existing run is resumed")
    add_data(p)
    add_experiment(p)
    g = p.add_argument_group("training")
    add_setting(g, "--sample-every", "training.sample_every", "EMA sample grid period (0: never)",
                type=non_negative_int)  # fmt: skip
    add_setting(g, "--keep", "training.keep", "checkpoints kept", type=positive_int)
    g.add_argument("--init-from", type=pathlib.Path, default=None,
                   help="fine-tune: start a new run from exported .safetensors weights (run.py export)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    cfg, workdir = resolve_run(args)
    check_data_args(cfg.data.dataset, cfg.data.root, args.download)
    if args.download:
        download_once(cfg)
    write_config(cfg, workdir)
    tcfg = train_config(cfg, workdir)
    if args.init_from is not None:
        tcfg.init_from = str(args.init_from)
    result = train(tcfg, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        how = f"stopped by {result['stopped_by']}" if result["stopped_by"] else "done"
        resumed = f" (resumed from step {result['start_step']})" if result["start_step"] else ""
        print(f"{how}: step {result['step']}{resumed} in {workdir}; checkpoint {result['checkpoint']}")
    return EXIT_INTERRUPTED if result["stopped_by"] == "SIGINT" else 0


def download_once(cfg, wait_s: float = 3600.0) -> None:
    """--download under torchrun: rank 0 fetches the archive; the other ranks wait until the data set reads (no
    two processes write the same archive)."""
    if int(os.environ.get("RANK", "0")) == 0:
        data_split(cfg.data.dataset, cfg.data.root, "train", download=True)
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            data_split(cfg.data.dataset, cfg.data.root, "train")
            return
        except (FileNotFoundError, ValueError, UsageError):
            if time.monotonic() > deadline:
                raise UsageError(
                    f"rank {os.environ.get('RANK')}: the data set did not appear in {wait_s:.0f} s"
                ) from None
            time.sleep(2.0)

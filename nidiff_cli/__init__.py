"""nidiff's command line: train, sample, score and compare diffusion models with non-isotropic (GFF) noise.

    nidiff --sde nivp --sampler pc                # the main job (= nidiff main ...), also `python run.py ...`
    nidiff train --config cifar10 --sde nivp --set training.steps=300000
    nidiff sample --workdir runs/digits_nivp --sampler dpm2m --sample-steps 10 --num-samples 64 --out samples/
    nidiff likelihood --workdir runs/digits_nivp --out results/
    nidiff fid --workdir runs/digits_nivp --sampler ddpm --sample-steps 100
    nidiff table --dataset digits                 # the paper's Table 1 protocol, scaled to a CPU
    nidiff study benchmarks/digits_study.toml --plan   # a resumable grid of models x samplers x seeds -> CSV
    nidiff config --config digits --set training.lr=2e-4   # the resolved configuration as TOML
    nidiff export --workdir runs/digits_nivp --out digits.safetensors
    nidiff plot --workdir runs/digits_nivp        # loss curve PNG
    nidiff noise                                  # white noise next to GFF noise

One module per command (add_parser, run). Bad arguments, unreadable checkpoints and missing data end with one line
on stderr and exit code 2; Ctrl-C ends a command cleanly with exit code 130 (SIGTERM: 0), after saving what it has.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads of two processes
# stall each other (a training step measured 4.6 s instead of 1.0 s on 2 busy cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import (  # noqa: E402
    config_cmd,
    export,
    fid,
    likelihood,
    main_job,
    noise,
    plot,
    sample,
    study,
    table,
    train,
)
from .common import Parser, UsageError  # noqa: E402
from .config import ConfigError  # noqa: E402

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = {
    "main": main_job,
    "train": train,
    "sample": sample,
    "likelihood": likelihood,
    "fid": fid,
    "table": table,
    "study": study,
    "noise": noise,
    "config": config_cmd,
    "export": export,
    "plot": plot,
}


def build_parser(prog: str = "nidiff") -> Parser:
    """The parser of every command (argparse subcommands)."""
    parser = Parser(
        prog=prog,
        description="nidiff: score-based diffusion with non-isotropic (GFF) noise. Without a command, the flags "
        "mean `main`: train on digits, sample, and score (a few minutes on 2 CPU cores).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    for name, p in sub.choices.items():
        p.prog = f"{prog} {name}"
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run a command; usage errors, bad checkpoints and missing data print one line and return 2."""
    from evaluation import InceptionUnavailableError
    from training import CheckpointError

    prog = prog or os.path.basename(sys.argv[0]) or "nidiff"
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["main", *argv]
    args = build_parser(prog).parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (UsageError, ConfigError, CheckpointError, InceptionUnavailableError, FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"{prog} {args.command}: error: {err}\n")
        return 2

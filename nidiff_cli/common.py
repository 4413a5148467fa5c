"""What every command shares: one-line errors, argument types, the device check, the resolved configuration of
a command line, run directories, provenance and interrupts."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence

import torch

from training.checkpoint import write_atomically

from .config import (
    PRESETS,
    Config,
    ConfigError,
    apply_setting,
    config_hash,
    dump_toml,
    field_paths,
    load_config,
    parse_setting,
    preset_for_dataset,
)

__all__ = [
    "UsageError",
    "Interrupted",
    "Parser",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "non_negative_float",
    "choice_list",
    "int_list",
    "float_list",
    "check_device",
    "add_common",
    "add_setting",
    "resolve_config",
    "resolve_run",
    "write_config",
    "read_run_config",
    "run_dir",
    "provenance",
    "write_json",
    "interruptible",
    "limit_cpu_threads",
    "EXIT_INTERRUPTED",
]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C
# Intra-op threads on the CPU (main job, study workers) unless OMP_NUM_THREADS says otherwise: the 8x8 network's
# operations are too small to split; on an idle 2-core machine the main job trained its 600 steps in 130 s with one
# thread and 133 s with two, which cost 1.44x the CPU time (benchmarks/RESULTS.md, main job levers).
CPU_THREADS = 1


class UsageError(Exception):
    """A bad command line or input, reported as one line on stderr with exit code 2."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `signal_name` says which."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block (training installs its own, checkpointing handlers)."""

    def handle(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def limit_cpu_threads(device: str) -> None:
    """CPU_THREADS intra-op threads on the CPU, unless OMP_NUM_THREADS is set."""
    if torch.device(device).type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(CPU_THREADS)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("<prog>: error: <message>", exit 2), no abbreviations (torchrun's own parser
    would take `--max` or `--n` as its options) and every default shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _number(cast: Callable, test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a number > 0")
non_negative_float = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
unit_interval = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _list_of(item: Callable[[str], object], what: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            items = tuple(item(s.strip()) for s in text.split(",") if s.strip())
        except argparse.ArgumentTypeError:
            items = ()
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        return items

    return parse


int_list = _list_of(positive_int, "integers >= 1")
float_list = _list_of(non_negative_float, "numbers >= 0")


def choice_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def item(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(text)
        return text

    return _list_of(item, ", ".join(choices))


def check_device(text: str) -> str:
    """The device string, or UsageError: not a torch device, CUDA asked for and absent, or an index out of range."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a torch device (cpu, cuda, cuda:K)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type != "cpu":
        raise UsageError(f"--device {text!r}: nidiff runs on cpu or cuda")
    return text


# ---- the configuration of a command line -------------------------------------------------------------------------

# argparse dest prefix of the flags that set a config field: "cfg:training.lr" is --lr
_CFG = "cfg:"


def add_setting(group, flag: str, path: str, help: str, **kwargs) -> None:
    """A flag that sets the config field `path`; its default is the configuration's (the digits preset's value is
    shown in --help)."""
    shown = _get(PRESETS["digits"](), path)
    help = f"{help} (default: {'none' if shown is None else shown}; config key {path})"
    if "choices" not in kwargs:
        kwargs.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
    group.add_argument(flag, dest=_CFG + path, default=argparse.SUPPRESS, help=help, **kwargs)


def add_common(p: argparse.ArgumentParser, workdir_help: str) -> None:
    """--config, --set, --device, --seed, --workdir: the flags every command has."""
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--config",
        default=None,
        help=f"a preset ({', '.join(PRESETS)}) or a TOML file; default: the run's config.toml when it exists, "
        "else the data set's preset (digits -> digits, cifar10/folder -> cifar10)",
    )
    g.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any config field, repeatable (see `run.py config`), e.g. training.lr=2e-4 model.ch=64",
    )
    add_setting(g, "--device", "device", help="torch device: cpu, cuda, cuda:K", type=str)
    add_setting(g, "--seed", "seed", help="seed of every random draw", type=int)
    g.add_argument("--workdir", type=pathlib.Path, default=None, help=workdir_help)


def flag_settings(args: argparse.Namespace) -> dict[str, object]:
    """{config path: value} of the config flags given on the command line."""
    return {k.removeprefix(_CFG): v for k, v in vars(args).items() if k.startswith(_CFG)}


def resolve_config(args: argparse.Namespace, own: Config | None = None) -> Config:
    """The command's configuration: --config (else the run's own config.toml `own`, else the data set's preset),
    then the flags, then --set; a flag and a --set that give one field two values are an error.

    A run that exists keeps its configuration: a flag that changes one of its fields outside RESUME_FREE is
    refused; --set may change anything.
    """
    flags = flag_settings(args)
    settings = [parse_setting(s) for s in args.settings]
    both = sorted(set(flags) & {path for path, _ in settings})
    if both:
        raise UsageError(f"{both[0]} is given both by a flag and by --set; give it once")
    if args.config is not None:
        cfg = load_config(args.config)
    elif own is not None:
        cfg = copy.deepcopy(own)
    else:
        cfg = load_config(preset_for_dataset(flags.get("data.dataset", "digits")))
    for path, value in flags.items():
        apply_setting(cfg, path, value)
    for path, value in settings:
        apply_setting(cfg, path, value)
    if own is not None:
        explicit = {path for path, _ in settings}
        for path in field_paths(cfg):
            mine, run = _get(cfg, path), _get(own, path)
            if mine != run and path not in RESUME_FREE and path not in explicit:
                raise UsageError(
                    f"the run in this workdir was made with {path} = {run!r}, not {mine!r}; a resumed run keeps "
                    f"its configuration (change it deliberately with --set {path}=...)"
                )
    check_device(cfg.device)
    return cfg


def resolve_run(args: argparse.Namespace) -> tuple[Config, pathlib.Path]:
    """(configuration, run directory): --workdir, else the configuration's default run directory; a run directory
    that holds a config.toml is the base (resolve_config)."""
    workdir = args.workdir if args.workdir is not None else run_dir(resolve_config(args))
    return resolve_config(args, read_run_config(workdir)), workdir


# Fields a resumed run may change with plain flags: how long it runs, where, how often it writes, and sampling.
RESUME_FREE = frozenset(
    {
        "training.steps",
        "training.save_every",
        "training.keep",
        "training.log_every",
        "training.sample_every",
        "device",
        "data.root",
    }  # fmt: skip
) | {f"sampling.{k}" for k in ("method", "steps", "num_samples", "batch_size")}


def _get(cfg: Config, path: str) -> object:
    holder = cfg
    for part in path.split("."):
        holder = holder[part] if isinstance(holder, dict) else getattr(holder, part)
    return holder


def run_dir(cfg: Config) -> pathlib.Path:
    """runs/<dataset>_<sde>[_<model>][_data | _p<power>][_dczero]: the default run directory of a config."""
    name = f"{cfg.data.dataset}_{cfg.sde.name}"
    if cfg.model.name != preset_for_dataset(cfg.data.dataset):
        name += f"_{cfg.model.name}"
    if cfg.sde.name in ("nivp", "nive"):
        if cfg.noise.kind == "data":
            name += "_data"
        else:
            name += f"_p{cfg.noise.power:g}" if cfg.noise.power != 1.0 else ""
            name += "_dczero" if cfg.noise.dc == "zero" else ""
    return pathlib.Path("runs") / name


def write_config(cfg: Config, workdir: pathlib.Path) -> pathlib.Path:
    """workdir/config.toml: the resolved tree of the run (rank 0 writes; atomically, as the other ranks may be
    reading it at the same moment: a resumed or restarted run under torchrun)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.toml"
    if int(os.environ.get("RANK", "0")) == 0:
        text = dump_toml(cfg).encode()
        write_atomically(path, lambda f: f.write(text))
    return path


def read_run_config(workdir: pathlib.Path) -> Config | None:
    """The run's own config.toml, or None."""
    path = workdir / "config.toml"
    if not path.is_file():
        return None
    try:
        return load_config(path)
    except ConfigError as err:
        raise UsageError(f"{path}: {err}") from None


def _commit() -> str:
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(cfg: Config) -> dict:
    """Where a result comes from: commit, torch version, device, seed and the resolved config's hash."""
    return {
        "commit": _commit(),
        "torch": torch.__version__,
        "device": cfg.device,
        "seed": cfg.seed,
        "config_sha256": config_hash(cfg),
    }


def write_json(path: pathlib.Path, payload: dict) -> pathlib.Path:
    """Write payload as indented JSON, creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path

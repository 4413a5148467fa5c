#!/usr/bin/env python
"""nidiff command line: train, sample, score and compare diffusion models with non-isotropic (GFF) noise.

    python run.py --sde nivp --sampler pc          # the main job (= run.py main ...): digits, about 5 CPU minutes
    python run.py train --dataset cifar10 --config cifar10 --sde nivp --steps 300000
    python run.py sample --workdir runs/digits_nivp --sampler dpm2m --steps 10 --n 64
    python run.py likelihood --workdir runs/digits_nivp
    python run.py fid --workdir runs/digits_nivp --sampler ddpm --steps 100
    python run.py table --dataset digits            # the paper's Table 1 protocol, scaled to a CPU
    python run.py noise                             # white noise next to GFF noise

Every command has --help, --device, --seed, --workdir and --config. Bad arguments, unreadable checkpoints and
missing data end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads of two processes
# stall each other (a training step measured 4.6 s instead of 1.0 s on 2 busy cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from tqdm.auto import tqdm

import evaluation
import samplers
from sde_lib import COLOURED_SDE_NAMES, SDE, SDE_NAMES, GFFCovariance, SpectralCovariance, make_sde
from training import CheckpointError, TrainConfig, load_model, score_fn_for, train
from training.config import LOSS_NAMES, NOISE_NAMES
from training.data import ImageDataset, load_dataset

COMMANDS = ("main", "train", "sample", "likelihood", "fid", "table", "noise")
DATASETS = ("digits", "cifar10", "folder")
CONFIGS = ("tiny", "digits", "cifar10")
SAMPLERS = tuple(samplers.METHODS)
DIVERGENCES = ("rademacher", "gaussian", "exact")
METRICS = ("digits", "inception")
# The model config a dataset trains with by default.
DEFAULT_CONFIG = {"digits": "digits", "cifar10": "cifar10", "folder": "cifar10"}

# The main job's budget: under 5 minutes on 2 shared CPU cores (benchmarks/RESULTS.md, "Main job and Table 1"),
# with TrainConfig's CPU schedule (batch 64, lr 1e-3, EMA with warm-up). Bits/dim use rtol = atol = 1e-4 there,
# which moved the mean by 0.001 bit/dim against 1e-5 on the trained digits model at a third of the NFE; the
# `likelihood` command defaults to 1e-5.
MAIN_TRAIN_STEPS = 500
MAIN_SAMPLE_STEPS = 100
MAIN_SAMPLES = 256
MAIN_BPD_IMAGES = 64
MAIN_BPD_TOL = 1e-4
# The Table 1 protocol (Ho et al. style: DDPM vs NI-DDPM at decreasing numbers of steps).
TABLE_SDES = ("vp", "nivp")
TABLE_STEPS = (1000, 100, 50, 20, 10)
TABLE_SAMPLERS = ("ddpm", "dpm2m")
TABLE_SAMPLES = 128  # 2 SDEs x 2 samplers x 1180 steps of 128 images, plus training: about 20 CPU minutes


class UsageError(Exception):
    """A bad command line or input, reported as one line on stderr with exit code 2."""


# ============================================================================ argument parsing


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "run.py <command>: error: <message>" on stderr, exit code 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _int_at_least(minimum: int):
    """argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1) (an EMA decay)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def choice_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """argparse type: a comma-separated, non-empty list of `choices`."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [s for s in items if s not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return items

    return parse


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: a comma-separated, non-empty list of integers >= 1."""
    try:
        items = tuple(positive_int(s) for s in text.split(",") if s.strip())
    except argparse.ArgumentTypeError:
        items = ()
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers >= 1, got {text!r}")
    return items


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: a comma-separated, non-empty list of numbers >= 0."""
    try:
        items = tuple(non_negative_float(s) for s in text.split(",") if s.strip())
    except argparse.ArgumentTypeError:
        items = ()
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers >= 0, got {text!r}")
    return items


def sampler_option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE an int, a float, true/false or a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(raw.lower(), raw)


def default_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common(p: argparse.ArgumentParser, workdir_help: str) -> None:
    """--device, --seed, --workdir, --config: the flags every command has."""
    g = p.add_argument_group("common")
    g.add_argument("--device", default=default_device(), help="torch device: cpu, cuda, cuda:K (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    g.add_argument("--workdir", type=pathlib.Path, default=None, help=workdir_help)
    g.add_argument(
        "--config",
        choices=CONFIGS,
        default=None,
        help="model config (models.MODEL_CONFIGS); default: the dataset's (digits -> digits, cifar10/folder -> "
        "cifar10). Commands that load a checkpoint check that it was trained with this config",
    )


def add_data(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    """--dataset, --data-root, --download."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=default, help="data set (default: %(default)s)")
    g.add_argument("--data-root", type=pathlib.Path, default=None, help="cifar10 batches/npz or an image folder")
    g.add_argument("--download", action="store_true", help="cifar10: fetch the official archive (needs internet)")


def add_experiment(p: argparse.ArgumentParser) -> None:
    """Experiment flags; batch size, learning rate, warm-up and EMA decay default to TrainConfig's."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    g = p.add_argument_group("experiment")
    g.add_argument("--sde", choices=SDE_NAMES, default="nivp", help="forward SDE (default: %(default)s)")
    g.add_argument("--gff-power", type=non_negative_float, default=1.0, help="GFF exponent: spectrum |k|^-2p")
    g.add_argument("--dc", choices=("one", "zero"), default="one", help="GFF DC bin (default: %(default)s)")
    g.add_argument(
        "--noise", choices=NOISE_NAMES, default="gff", help="nivp/nive covariance: gff, or the data-matched spectrum"
    )
    g.add_argument("--loss", choices=LOSS_NAMES, default="dsm", help="training loss (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=defaults["batch_size"], help="default: %(default)s")
    g.add_argument("--lr", type=positive_float, default=defaults["lr"], help="learning rate (default: %(default)s)")
    g.add_argument("--warmup", type=non_negative_int, default=defaults["warmup"], help="lr warm-up steps")
    g.add_argument("--ema-decay", type=unit_interval, default=defaults["ema_decay"], help="default: %(default)s")
    g.add_argument("--save-every", type=non_negative_int, default=defaults["save_every"], help="checkpoint period")


def add_sampling(p: argparse.ArgumentParser, method: str, steps: int | None, n: int) -> None:
    """--sampler, --steps, --n, --sample-batch-size, --option KEY=VALUE."""
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", choices=SAMPLERS, default=method, help="sampling method (default: %(default)s)")
    g.add_argument(
        "--steps", type=positive_int, default=steps, help="sampler steps (default: %(default)s; None: the method's)"
    )
    g.add_argument("--n", type=positive_int, default=n, help="number of images (default: %(default)s)")
    g.add_argument("--sample-batch-size", type=positive_int, default=256, help="images per sampler call")
    g.add_argument(
        "--option",
        type=sampler_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampler option, repeatable (e.g. corrector=langevin, snr=0.16, eta=0.5)",
    )


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    """--checkpoint PATH."""
    p.add_argument(
        "--checkpoint",
        type=pathlib.Path,
        default=None,
        help="checkpoint file to load (default: the newest readable one in --workdir); EMA weights",
    )


def build_parser() -> Parser:
    """The parser of every command (argparse subcommands)."""
    parser = Parser(
        prog="run.py",
        description="nidiff: score-based diffusion with non-isotropic (GFF) noise. Without a command, the flags "
        "mean `main`: train on digits, sample, and score (about 5 minutes on 2 CPU cores).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_dir = "run directory (default: runs/<dataset>_<sde>[_<config>][_data])"
    load_dir = "run directory whose newest readable checkpoint is loaded (default: runs/digits_nivp)"

    p = sub.add_parser("main", help="train digits, sample, metrics.json and samples.png (the default command)")
    p.description = (
        "Train (or continue) a digits model, sample it, and write samples.png and metrics.json: Frechet distance "
        "and precision/recall against held-out digits in a digits classifier's feature space, the train-vs-test "
        "floor, the classifier's accuracy, and bits/dim of held-out digits (probability-flow ODE, 17 grey levels)."
    )
    add_common(p, run_dir)
    p.set_defaults(dataset="digits", data_root=None, download=False)
    add_experiment(p)
    add_sampling(p, "pc", MAIN_SAMPLE_STEPS, MAIN_SAMPLES)
    p.add_argument("--train-steps", type=positive_int, default=MAIN_TRAIN_STEPS, help="optimiser steps in total")
    p.add_argument("--bpd-images", type=non_negative_int, default=MAIN_BPD_IMAGES, help="held-out images for bpd")

    p = sub.add_parser("train", help="train or resume a model (torchrun for several processes)")
    add_common(p, run_dir)
    add_data(p)
    add_experiment(p)
    p.add_argument("--steps", type=positive_int, default=2000, help="total optimiser steps (default: %(default)s)")
    p.add_argument("--sample-every", type=non_negative_int, default=0, help="EMA sample grid period (0: never)")
    p.add_argument("--keep", type=positive_int, default=3, help="checkpoints kept (default: %(default)s)")

    p = sub.add_parser("sample", help="sample a trained model: a grid PNG and, with --out, one PNG per image")
    add_common(p, load_dir)
    add_checkpoint(p)
    add_sampling(p, "pc", None, 64)
    p.add_argument("--out", type=pathlib.Path, default=None, help="also write one PNG per image into this folder")
    p.add_argument("--grid", type=pathlib.Path, default=None, help="grid path (default: <workdir>/samples_*.png)")

    p = sub.add_parser("likelihood", help="bits/dim of a data split through the probability-flow ODE")
    add_common(p, load_dir)
    add_checkpoint(p)
    add_data(p, default=None)
    p.add_argument("--split", choices=("train", "test"), default="test", help="data split (default: %(default)s)")
    p.add_argument("--n", type=positive_int, default=None, help="number of images (default: the whole split)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per ODE solve")
    p.add_argument("--divergence", choices=DIVERGENCES, default="rademacher", help="divergence estimator")
    p.add_argument("--rtol", type=positive_float, default=1e-5, help="ODE relative tolerance (default: 1e-5)")
    p.add_argument("--atol", type=positive_float, default=1e-5, help="ODE absolute tolerance (default: 1e-5)")
    p.add_argument("--solver", default="dopri5", help="adaptive torchdiffeq method (default: %(default)s)")
    p.add_argument("--no-dequantize", action="store_true", help="evaluate at bin centres instead of U[0,1) noise")

    p = sub.add_parser("fid", help="FID, KID, precision and recall of samples (clean-fid)")
    add_common(p, load_dir)
    add_checkpoint(p)
    add_sampling(p, "pc", None, 1000)
    add_data(p, default=None)
    p.add_argument("--images", type=pathlib.Path, default=None, help="score this folder instead of sampling")
    p.add_argument("--ref", type=pathlib.Path, default=None, help="reference image folder (default: the test split)")
    p.add_argument("--ref-stats", default=None, help="clean-fid reference statistics name, e.g. cifar10")
    p.add_argument("--ref-res", type=positive_int, default=32, help="resolution of --ref-stats (default: 32)")
    p.add_argument("--ref-split", default="train", help="split of --ref-stats (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default=None, help="feature space (default: digits for digits)")
    p.add_argument("--mode", choices=evaluation.MODES, default="clean", help="clean-fid mode (default: clean)")

    p = sub.add_parser("table", help="the paper's Table 1: SDEs x steps x samplers -> FID, P, R")
    add_common(p, "run directory (default: runs/table1_<dataset>); one sub-directory per SDE")
    add_data(p)
    add_experiment(p)
    p.add_argument("--sdes", type=choice_list(SDE_NAMES), default=TABLE_SDES, help="default: vp,nivp")
    p.add_argument("--samplers", type=choice_list(SAMPLERS), default=TABLE_SAMPLERS, help="default: ddpm,dpm2m")
    p.add_argument("--steps", type=int_list, default=TABLE_STEPS, help="default: 1000,100,50,20,10")
    p.add_argument("--n", type=positive_int, default=TABLE_SAMPLES, help="images per cell (default: %(default)s)")
    p.add_argument("--sample-batch-size", type=positive_int, default=256, help="images per sampler call")
    p.add_argument("--train-steps", type=positive_int, default=MAIN_TRAIN_STEPS, help="optimiser steps per SDE")
    p.add_argument("--metric", choices=METRICS, default=None, help="feature space (default: digits for digits)")
    p.add_argument("--mode", choices=evaluation.MODES, default="clean", help="clean-fid mode (inception metric)")
    p.add_argument("--ref-stats", default=None, help="inception metric: clean-fid reference statistics name")
    p.add_argument("--ref-res", type=positive_int, default=32, help="resolution of --ref-stats")
    p.add_argument("--ref-split", default="train", help="split of --ref-stats")

    p = sub.add_parser("noise", help="PNG: white noise next to GFF noise at several powers and data-matched noise")
    add_common(p, "output directory (default: runs/noise)")
    add_data(p)
    p.add_argument("--powers", type=float_list, default=(0.5, 1.0, 1.5, 2.0), help="GFF powers (default 0.5,1,1.5,2)")
    p.add_argument("--size", type=positive_int, default=64, help="side of the white/GFF noise images (default 64)")
    p.add_argument("--count", type=positive_int, default=6, help="samples per row (default: %(default)s)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="PNG path (default: <workdir>/noise.png)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; without a command (flags only, or nothing) the command is `main`."""
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["main", *argv]
    return build_parser().parse_args(argv)


# ============================================================================ data and models


def config_name(args: argparse.Namespace) -> str:
    """--config, or the data set's default model config."""
    return args.config or DEFAULT_CONFIG[args.dataset]


def run_name(args: argparse.Namespace) -> str:
    """<dataset>_<sde>, then _<config> when it is not the dataset's default, _data for data-matched noise,
    _p<power> and _dczero for GFF variants of the coloured SDEs."""
    name = f"{args.dataset}_{args.sde}"
    if config_name(args) != DEFAULT_CONFIG[args.dataset]:
        name += f"_{config_name(args)}"
    if args.sde in COLOURED_SDE_NAMES:
        if args.noise == "data":
            name += "_data"
        else:
            name += f"_p{args.gff_power:g}" if args.gff_power != 1.0 else ""
            name += "_dczero" if args.dc == "zero" else ""
    return name


def check_data_args(dataset: str, root: pathlib.Path | None, download: bool = False) -> None:
    """A folder data set needs --data-root; a given --data-root must exist unless it is a download target."""
    if dataset == "folder" and root is None:
        raise UsageError("--dataset folder needs --data-root DIR (a folder of PNG/JPEG images)")
    if root is not None and not root.exists() and not download:
        raise UsageError(f"--data-root {str(root)!r} does not exist")


def data_split(dataset: str, root: pathlib.Path | None, split: str, download: bool = False) -> ImageDataset:
    """A data set split (training.data.load_dataset): integer `pixels`, `labels`, float `images()` in [-1, 1]."""
    check_data_args(dataset, root, download)
    return load_dataset(dataset, root=None if root is None else str(root), split=split, download=download)


def train_config(args: argparse.Namespace, workdir: pathlib.Path, steps: int, sde: str | None = None) -> TrainConfig:
    """The TrainConfig of the experiment flags (`sde` overrides --sde, for the table)."""
    return TrainConfig(
        workdir=str(workdir),
        dataset=args.dataset,
        data_root=None if args.data_root is None else str(args.data_root),
        model=config_name(args),
        sde=sde or args.sde,
        gff_power=args.gff_power,
        dc=args.dc,
        noise=args.noise,
        loss=args.loss,
        steps=steps,
        batch_size=args.batch_size,
        save_every=args.save_every,
        seed=args.seed,
        device=args.device,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
    )


def check_sampler(sde_name: str, shape: tuple[int, int, int], method: str, steps: int | None, options: dict) -> None:
    """Refuse a sampler that does not apply to the SDE (or bad options) before any training: one step of the
    sampler with a zero score on a single image raises the sampler's own ValueError/TypeError."""
    sde = make_sde(sde_name, shape)
    try:
        samplers.sample(sde, lambda x, t: torch.zeros_like(x), (1, *shape), method=method, steps=steps, **options)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--sampler {method}: {err}") from err


def load_run(args: argparse.Namespace) -> tuple[nn.Module, SDE, TrainConfig, pathlib.Path]:
    """(EMA model, SDE, TrainConfig, checkpoint source) of --checkpoint or of --workdir's newest checkpoint."""
    source = args.checkpoint or args.workdir
    if not source.exists():
        raise UsageError(f"{str(source)!r} does not exist (train a model first: python run.py train ...)")
    model, sde, cfg = load_model(source, ema=True, device=args.device)
    if args.config is not None and cfg.model != args.config:
        raise UsageError(f"the checkpoint was trained with --config {cfg.model}, not {args.config}")
    return model, sde, cfg, source


@torch.no_grad()
def generate(
    model: nn.Module,
    sde: SDE,
    cfg: TrainConfig,
    method: str,
    steps: int | None,
    n: int,
    batch_size: int,
    seed: int,
    device: str,
    options: dict | None = None,
) -> tuple[Tensor, float]:
    """n samples (on the CPU) and the mean number of score evaluations per sampler call."""
    score_fn = score_fn_for(model, sde, cfg.loss)
    generator = torch.Generator(device).manual_seed(seed)
    shape = tuple(model.config.image_shape)
    xs, nfes = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x, nfe = samplers.sample(
            sde, score_fn, (b, *shape), method, steps, generator, True, device, None, **(options or {})
        )
        xs.append(x.float().cpu())
        nfes.append(nfe)
    return torch.cat(xs), float(np.mean(nfes))


def bits_per_dim(
    model: nn.Module,
    sde: SDE,
    cfg: TrainConfig,
    pixels: Tensor,
    levels: int,
    batch_size: int,
    seed: int,
    device: str,
    **options,
) -> tuple[Tensor, float]:
    """bpd per image of integer `pixels` (samplers.bits_per_dim: bin width 2/levels, docs/math.md §5) and the mean
    NFE."""
    score_fn = score_fn_for(model, sde, cfg.loss)
    generator = torch.Generator(device).manual_seed(seed)
    out, nfes = [], []
    for start in tqdm(range(0, len(pixels), batch_size), desc="bits/dim", leave=False):
        batch = pixels[start : start + batch_size].to(device)
        bpd, nfe = samplers.bits_per_dim(sde, score_fn, batch, levels=levels, generator=generator, **options)
        out.append(bpd.detach().double().cpu())
        nfes.append(nfe)
    return torch.cat(out), float(np.mean(nfes))


def mean_and_sem(values: Tensor) -> tuple[float, float]:
    """(mean, standard error std / sqrt(n)) of per-image values."""
    values = values.double()
    sem = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), sem


def digits_metric(workdir: pathlib.Path, seed: int) -> tuple[evaluation.DigitsMetric, ImageDataset]:
    """The digits feature space (its classifier trained on the train split, cached in workdir) and the test split."""
    train_set, test_set = data_split("digits", None, "train"), data_split("digits", None, "test")
    classifier, acc = evaluation.load_or_train_digits_classifier(
        workdir / "digits_classifier.pt",
        train_set.images(),
        train_set.labels,
        test_set.images(),
        test_set.labels,
        seed=seed,
        progress=True,
    )
    return evaluation.DigitsMetric(classifier, acc, train_set.images(), test_set.images()), test_set


def write_json(path: pathlib.Path, payload: dict) -> None:
    """Write payload as indented JSON, creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ============================================================================ commands


def cmd_main(args: argparse.Namespace) -> int:
    """Train (or continue) digits, sample, write samples.png and metrics.json, print a summary (module doc)."""
    options = dict(args.option)
    shape = tuple(evaluation.DIGITS_SHAPE)
    check_sampler(args.sde, shape, args.sampler, args.steps, options)
    workdir = args.workdir or pathlib.Path("runs") / run_name(args)
    started = time.perf_counter()

    result = train(train_config(args, workdir, args.train_steps), progress=True)
    model, sde, cfg = load_model(workdir, ema=True, device=args.device)
    t0 = time.perf_counter()
    x, nfe = generate(
        model, sde, cfg, args.sampler, args.steps, args.n, args.sample_batch_size, args.seed, args.device, options
    )
    sample_seconds = time.perf_counter() - t0
    grid = evaluation.save_grid(x, workdir / "samples.png", upscale=4)

    metric, test_set = digits_metric(workdir, args.seed)
    scores = metric.evaluate(x)
    metrics = {
        "dataset": "digits (scikit-learn load_digits, 8x8, 17 grey levels 0..16)",
        "sde": cfg.sde,
        "noise": cfg.noise if cfg.sde in COLOURED_SDE_NAMES else "white (isotropic)",
        "gff_power": cfg.gff_power,
        "model_config": cfg.model,
        "train_steps": result["step"],
        "train_seconds_this_call": round(result["seconds"], 1),
        "sampler": {"method": args.sampler, "steps": args.steps, "nfe": nfe, "n": args.n, "options": options},
        "sample_seconds": round(sample_seconds, 1),
        "feature_space": f"penultimate layer (64-d) of a digits CNN classifier, test accuracy {metric.accuracy:.4f}",
        "classifier_test_accuracy": metric.accuracy,
        "frechet_distance": scores["frechet_distance"],
        "frechet_distance_real_floor": metric.real_floor(args.n, args.seed),
        "frechet_distance_real_floor_note": f"{args.n} train digits vs the held-out test digits, same feature space",
        "precision": scores["precision"],
        "recall": scores["recall"],
        "precision_recall_k": 3,
        "sample_class_histogram": scores["class_histogram"],
        "reference": f"{len(test_set)} held-out test digits",
    }
    if args.bpd_images:
        held_out = test_set.pixels[: args.bpd_images]
        bpd, bpd_nfe = bits_per_dim(
            model,
            sde,
            cfg,
            held_out,
            test_set.levels,
            128,
            args.seed,
            args.device,
            divergence="rademacher",
            rtol=MAIN_BPD_TOL,
            atol=MAIN_BPD_TOL,
        )
        mean, sem = mean_and_sem(bpd)
        metrics["bits_per_dim"] = {
            "mean": mean,
            "standard_error": sem,
            "images": len(held_out),
            "levels": test_set.levels,
            "dequantization": "uniform u ~ U[0,1) per pixel, bin width 2/17 in [-1, 1]: y = (n + u) 2/17 - 1",
            "estimator": f"probability-flow ODE (dopri5, rtol = atol = {MAIN_BPD_TOL:g}), Hutchinson divergence "
            "(one Rademacher probe per image)",
            "nfe": bpd_nfe,
        }
    metrics["total_seconds_this_call"] = round(time.perf_counter() - started, 1)
    write_json(workdir / "metrics.json", metrics)
    print_summary(workdir, grid, metrics)
    return 0


def print_summary(workdir: pathlib.Path, grid: pathlib.Path, m: dict) -> None:
    """The main job's closing summary: paths and the headline numbers."""
    lines = [
        f"run directory   {workdir}",
        f"samples         {grid}  ({m['sampler']['n']} images, {m['sampler']['method']}, NFE {m['sampler']['nfe']:g})",
        f"metrics         {workdir / 'metrics.json'}",
        f"Frechet dist.   {m['frechet_distance']:.3f}  (real-data floor {m['frechet_distance_real_floor']:.3f})",
        f"precision       {m['precision']:.3f}   recall {m['recall']:.3f}  (k = 3)",
        f"classifier acc. {m['classifier_test_accuracy']:.4f} (held-out digits; its features define the metric)",
    ]
    if "bits_per_dim" in m:
        b = m["bits_per_dim"]
        lines.append(
            f"bits/dim        {b['mean']:.3f} +- {b['standard_error']:.3f}  ({b['images']} held-out digits, "
            "17 levels, PF ODE)"
        )
    lines.append(f"time            {m['total_seconds_this_call']:.0f} s")
    print("\n".join(lines))


def cmd_train(args: argparse.Namespace) -> int:
    """Train or resume to --steps (training.train; DDP under torchrun, SIGTERM/SIGINT save and exit 0)."""
    check_data_args(args.dataset, args.data_root)
    if args.download:
        data_split(args.dataset, args.data_root, "train", download=True)
    workdir = args.workdir or pathlib.Path("runs") / run_name(args)
    cfg = train_config(args, workdir, args.steps)
    cfg.sample_every, cfg.keep = args.sample_every, args.keep
    result = train(cfg, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        how = f"stopped by {result['stopped_by']}" if result["stopped_by"] else "done"
        print(f"{how}: step {result['step']} in {workdir}; checkpoint {result['checkpoint']}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample a checkpoint: a grid PNG, with --out one PNG per image, and the NFE."""
    args.workdir = args.workdir or pathlib.Path("runs/digits_nivp")
    options = dict(args.option)
    model, sde, cfg, source = load_run(args)
    check_sampler(cfg.sde, tuple(model.config.image_shape), args.sampler, args.steps, options)
    x, nfe = generate(
        model, sde, cfg, args.sampler, args.steps, args.n, args.sample_batch_size, args.seed, args.device, options
    )
    tag = f"{args.sampler}_{args.steps or 'default'}"
    grid = evaluation.save_grid(
        x, args.grid or args.workdir / f"samples_{tag}.png", upscale=4 if x.shape[-1] < 32 else 1
    )
    print(f"grid {grid}  ({args.n} images from {source}, {args.sampler}, NFE {nfe:g} per image)")
    if args.out is not None:
        evaluation.save_png_folder(x, args.out)
        print(f"images {args.out}/000000.png ... {args.n - 1:06d}.png")
    return 0


def cmd_likelihood(args: argparse.Namespace) -> int:
    """Bits/dim of a split through the probability-flow ODE (docs/math.md §5): mean, standard error, JSON."""
    args.workdir = args.workdir or pathlib.Path("runs/digits_nivp")
    model, sde, cfg, source = load_run(args)
    dataset = args.dataset or cfg.dataset
    root = args.data_root or (None if cfg.data_root is None else pathlib.Path(cfg.data_root))
    split = data_split(dataset, root, args.split)
    pixels, levels = split.pixels[: args.n], split.levels
    bpd, nfe = bits_per_dim(
        model,
        sde,
        cfg,
        pixels,
        levels,
        args.batch_size,
        args.seed,
        args.device,
        dequantize=not args.no_dequantize,
        divergence=args.divergence,
        rtol=args.rtol,
        atol=args.atol,
        solver=args.solver,
    )
    mean, sem = mean_and_sem(bpd)
    out = {
        "checkpoint": str(source),
        "dataset": dataset,
        "split": args.split,
        "images": len(pixels),
        "levels": levels,
        "dequantization": "bin centre" if args.no_dequantize else f"uniform, bin width 2/{levels}",
        "divergence": args.divergence,
        "rtol": args.rtol,
        "atol": args.atol,
        "solver": args.solver,
        "bits_per_dim": mean,
        "standard_error": sem,
        "nfe": nfe,
    }
    path = args.workdir / f"likelihood_{dataset}_{args.split}.json"
    write_json(path, out)
    print(
        f"bits/dim {mean:.4f} +- {sem:.4f} (standard error, {len(pixels)} {dataset} {args.split} images, "
        f"{levels} levels, NFE {nfe:g}); {path}"
    )
    return 0


def fresh_png_folder(folder: pathlib.Path, images: Tensor) -> pathlib.Path:
    """Write images as folder/000000.png ... after removing the folder's old PNGs (a smaller n leaves none)."""
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    evaluation.save_png_folder(images, folder)
    return folder


def folder_metric(
    metric: str, workdir: pathlib.Path, dataset: str, seed: int
) -> tuple[evaluation.FeatureExtractor | None, bool]:
    """(feature extractor, native_size) for clean-fid: the digits classifier at 8x8, or Inception (None)."""
    if metric == "inception":
        return None, False
    if dataset != "digits":
        raise UsageError(f"--metric digits scores 8x8 digits; use --metric inception for {dataset}")
    digits, _ = digits_metric(workdir, seed)
    return evaluation.cleanfid_extractor(digits.classifier), True


def cmd_fid(args: argparse.Namespace) -> int:
    """FID, KID, precision and recall (clean-fid) of sampled or given images against a folder or statistics."""
    args.workdir = args.workdir or pathlib.Path("runs/digits_nivp")
    options = dict(args.option)
    if args.images is not None and not args.images.is_dir():
        raise UsageError(f"--images {str(args.images)!r} is not a directory")
    if args.ref is not None and not args.ref.is_dir():
        raise UsageError(f"--ref {str(args.ref)!r} is not a directory")
    if args.ref is not None and args.ref_stats is not None:
        raise UsageError("give either --ref DIR or --ref-stats NAME, not both")
    cfg = None
    if args.images is None:
        model, sde, cfg, source = load_run(args)
        check_sampler(cfg.sde, tuple(model.config.image_shape), args.sampler, args.steps, options)
        x, nfe = generate(
            model, sde, cfg, args.sampler, args.steps, args.n, args.sample_batch_size, args.seed, args.device, options
        )
        tag = f"{args.sampler}_{args.steps or 'default'}"
        images = fresh_png_folder(args.workdir / "fid" / tag, x)
        print(f"{args.n} samples from {source} ({args.sampler}, NFE {nfe:g}) in {images}")
    else:
        images, tag, nfe = args.images, args.images.name, None
    dataset = args.dataset or (cfg.dataset if cfg is not None else "digits")
    metric = args.metric or ("digits" if dataset == "digits" else "inception")
    if args.ref_stats is not None:
        if metric != "inception":
            raise UsageError("--ref-stats are clean-fid's Inception statistics: use --metric inception")
        reference = f"clean-fid statistics {args.ref_stats}/{args.ref_res}/{args.ref_split}/{args.mode}"
        scores = evaluation.compare_to_reference(
            images, args.ref_stats, args.ref_res, args.ref_split, mode=args.mode, device=args.device, verbose=True
        )
    else:
        extractor, native = folder_metric(metric, args.workdir, dataset, args.seed)
        if args.ref is None:
            root = args.data_root or (None if cfg is None or cfg.data_root is None else pathlib.Path(cfg.data_root))
            ref = fresh_png_folder(
                args.workdir / "fid" / f"reference_{dataset}_test", data_split(dataset, root, "test").images()
            )
        else:
            ref = args.ref
        reference = str(ref)
        scores = evaluation.compare_folders(
            images,
            ref,
            mode=args.mode,
            feature_extractor=extractor,
            native_size=native,
            device=args.device,
            verbose=True,
        )
    out = {"images": str(images), "reference": reference, "metric": metric, "mode": args.mode, "nfe": nfe, **scores}
    path = args.workdir / f"fid_{tag}.json"
    write_json(path, out)
    name = "FID" if metric == "inception" else "FD (digits features)"
    print(
        f"{name} {scores['fid']:.4f}  KID {scores['kid']:.5f}  precision {scores['precision']:.3f}  "
        f"recall {scores['recall']:.3f}  vs {reference}; {path}"
    )
    return 0


SDE_LABELS = {"vp": "VP (white)", "nivp": "NIVP (GFF)", "subvp": "subVP", "ve": "VE (white)", "nive": "NI-VE (GFF)"}


def table_markdown(rows: list[dict], sdes: Sequence[str], score: str) -> str:
    """Rows sampler x steps, for each SDE the columns <score>, P, R."""
    head = ["sampler", "steps"] + [f"{SDE_LABELS[s]} {c}" for s in sdes for c in (score, "P", "R")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = {(r["sampler"], r["steps"], r["sde"]): r for r in rows}
    for sampler, steps in dict.fromkeys((r["sampler"], r["steps"]) for r in rows):
        out = [sampler, str(steps)]
        for s in sdes:
            r = cells.get((sampler, steps, s))
            out += [f"{r['fid']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}"] if r else ["", "", ""]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def cmd_table(args: argparse.Namespace) -> int:
    """Table 1 protocol: per SDE train (or resume), then per steps x sampler sample --n images and score them."""
    workdir = args.workdir or pathlib.Path("runs") / f"table1_{args.dataset}"
    metric = args.metric or ("digits" if args.dataset == "digits" else "inception")
    check_data_args(args.dataset, args.data_root)
    from models import MODEL_CONFIGS

    shape = tuple(MODEL_CONFIGS[config_name(args)].image_shape)
    for sde_name in args.sdes:
        for method in args.samplers:
            check_sampler(sde_name, shape, method, 1, {})
    if metric == "digits":
        if args.dataset != "digits":
            raise UsageError(f"--metric digits scores 8x8 digits; use --metric inception for {args.dataset}")
        digits, _ = digits_metric(workdir, args.seed)
    elif args.ref_stats is None:
        ref_dir = fresh_png_folder(
            workdir / "reference_test", data_split(args.dataset, args.data_root, "test").images()
        )
    rows, started = [], time.perf_counter()
    csv_path, md_path = workdir / "table1.csv", workdir / "table1.md"
    fields = ["sde", "sampler", "steps", "nfe", "fid", "kid", "precision", "recall", "seconds"]
    for sde_name in args.sdes:
        run_dir = workdir / sde_name
        train(train_config(args, run_dir, args.train_steps, sde=sde_name), progress=True)
        model, sde, cfg = load_model(run_dir, ema=True, device=args.device)
        for steps in args.steps:
            for method in args.samplers:
                t0 = time.perf_counter()
                x, nfe = generate(
                    model, sde, cfg, method, steps, args.n, args.sample_batch_size, args.seed, args.device
                )
                if metric == "digits":
                    s = digits.evaluate(x)
                    scores = {"fid": s["frechet_distance"], "kid": float("nan"), **s}
                else:
                    folder = fresh_png_folder(run_dir / "samples" / f"{method}_{steps}", x)
                    if args.ref_stats is None:
                        scores = evaluation.compare_folders(folder, ref_dir, mode=args.mode, device=args.device)
                    else:
                        scores = evaluation.compare_to_reference(
                            folder, args.ref_stats, args.ref_res, args.ref_split, mode=args.mode, device=args.device
                        )
                row = {"sde": sde_name, "sampler": method, "steps": steps, "nfe": nfe}
                row.update({k: scores[k] for k in ("fid", "kid", "precision", "recall")})
                row["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                tqdm.write(f"{sde_name} {method} {steps}: " + ", ".join(f"{k} {row[k]:.4g}" for k in fields[3:]))
                workdir.mkdir(parents=True, exist_ok=True)
                with open(csv_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)
    score = "FID" if metric == "inception" else "FD"
    table = table_markdown(rows, args.sdes, score)
    space = f"Inception-v3 (clean-fid, {args.mode})" if metric == "inception" else "digits-classifier"
    note = (
        f"{score}: Frechet distance in the {space} feature space, {args.n} samples per cell; P, R: precision / "
        f"recall (k = 3); {args.train_steps} training steps per SDE; {time.perf_counter() - started:.0f} s in total."
    )
    if metric == "digits":
        note += f" Real-data floor (train vs test, {args.n} images): {digits.real_floor(args.n, args.seed):.2f}."
    md_path.write_text(table + "\n\n" + note + "\n")
    print(table + "\n\n" + note + f"\n\nCSV {csv_path}\nmarkdown {md_path}")
    return 0


def render_rows(rows: list[tuple[str, Tensor]], path: pathlib.Path, cell: int, label_width: int = 230) -> pathlib.Path:
    """One labelled row of images per entry; images in [-1, 1] are upscaled (nearest) to cell x cell pixels."""
    pad = 4
    count = max(len(images) for _, images in rows)
    width = label_width + count * (cell + pad) + pad
    canvas = Image.new("RGB", (width, len(rows) * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), label, fill=(0, 0, 0))
        factor = max(1, cell // images.shape[-1])
        pixels = evaluation.to_uint8(images).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        for i, img in enumerate(pixels):
            arr = img.expand(3, -1, -1).permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(arr, mode="RGB"), (label_width + pad + i * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def cmd_noise(args: argparse.Namespace) -> int:
    """White noise, GFF noise at several powers (the same white draws, coloured: g = Sigma^{1/2} eps,
    docs/math.md §1.4), noise with the data's average power spectrum, and real images. Noise is shown at +-3 standard
    deviations."""
    from models import MODEL_CONFIGS

    data = data_split(args.dataset, args.data_root, "train", args.download).images()
    shape = tuple(MODEL_CONFIGS[args.config].image_shape) if args.config else (data.shape[1], args.size, args.size)
    generator = torch.Generator().manual_seed(args.seed)
    eps = torch.randn((args.count, *shape), generator=generator, dtype=torch.float64)
    eps_data = torch.randn((args.count, *data.shape[1:]), generator=generator, dtype=torch.float64)
    side = f"{shape[-2]}x{shape[-1]}"
    rows = [(f"white noise, Sigma = I ({side})", eps / 3)]
    rows += [(f"GFF power {p:g} ({side})", GFFCovariance(shape, power=p).sqrt_mul(eps) / 3) for p in args.powers]
    data_side = f"{data.shape[-2]}x{data.shape[-1]}"
    spectral = SpectralCovariance.from_data(data.double())
    rows.append((f"{args.dataset}-matched spectrum ({data_side})", spectral.sqrt_mul(eps_data) / 3))
    rows.append((f"{args.dataset} images ({data_side})", data[: args.count]))
    out = args.out or (args.workdir or pathlib.Path("runs/noise")) / "noise.png"
    render_rows(rows, out, cell=max(64, shape[-1], data.shape[-1]))
    print(f"noise picture {out}: rows {', '.join(label for label, _ in rows)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; usage errors, bad checkpoints and missing data print one line and return 2."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    handler = {
        "main": cmd_main,
        "train": cmd_train,
        "sample": cmd_sample,
        "likelihood": cmd_likelihood,
        "fid": cmd_fid,
        "table": cmd_table,
        "noise": cmd_noise,
    }[args.command]
    try:
        return handler(args)
    except (UsageError, CheckpointError, evaluation.InceptionUnavailableError, FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"run.py {args.command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())

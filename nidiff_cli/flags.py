"""The flag groups commands share; each flag sets one field of the configuration tree (nidiff_cli.config)."""

from __future__ import annotations

import argparse
import pathlib

import samplers
from sde_lib import SDE_NAMES
from training.config import LOSS_NAMES, NOISE_NAMES

from .common import add_setting, non_negative_float, non_negative_int, positive_float, positive_int, unit_interval

__all__ = ["add_data", "add_experiment", "add_sampling", "add_checkpoint", "DATASETS", "SAMPLERS"]

DATASETS = ("digits", "cifar10", "folder")
SAMPLERS = tuple(samplers.METHODS)


def add_data(p: argparse.ArgumentParser) -> None:
    """--dataset, --data-root, --download."""
    g = p.add_argument_group("data")
    add_setting(g, "--dataset", "data.dataset", "data set", choices=DATASETS)
    add_setting(g, "--data-root", "data.root", "cifar10 batches / npz, or an image folder", type=str)
    g.add_argument("--download", action="store_true", help="cifar10: fetch the official archive (needs internet)")


def add_experiment(p: argparse.ArgumentParser, sde: bool = True) -> None:
    """The SDE (unless the command chooses several), its noise and the training schedule."""
    g = p.add_argument_group("experiment")
    if sde:
        add_setting(g, "--sde", "sde.name", "forward SDE", choices=SDE_NAMES)
    add_setting(g, "--noise", "noise.kind", "nivp / nive covariance: gff, or the data's spectrum", choices=NOISE_NAMES)
    add_setting(g, "--gff-power", "noise.power", "GFF exponent p: spectrum |k|^-2p", type=non_negative_float)
    add_setting(g, "--dc", "noise.dc", "GFF DC bin", choices=("one", "zero"))
    add_setting(g, "--loss", "training.loss", "training loss", choices=LOSS_NAMES)
    add_setting(g, "--train-steps", "training.steps", "optimiser steps in total (extends a resumed run)",
                type=positive_int)  # fmt: skip
    add_setting(g, "--batch-size", "training.batch_size", "training batch", type=positive_int)
    add_setting(g, "--lr", "training.lr", "AdamW learning rate", type=positive_float)
    add_setting(g, "--warmup", "training.warmup", "learning-rate warm-up steps", type=non_negative_int)
    add_setting(g, "--ema-decay", "training.ema_decay", "EMA decay", type=unit_interval)
    add_setting(g, "--save-every", "training.save_every", "checkpoint period in steps", type=non_negative_int)


def _option(text: str) -> str:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return f"sampling.options.{key}={value}"


def add_sampling(p: argparse.ArgumentParser, single: bool = True) -> None:
    """--sampler, --sample-steps, --num-samples, --sample-batch-size, --option KEY=VALUE (single=False: the
    command chooses several samplers and step counts itself)."""
    g = p.add_argument_group("sampling")
    if single:
        add_setting(g, "--sampler", "sampling.method", "sampling method", choices=SAMPLERS)
        add_setting(g, "--sample-steps", "sampling.steps", "sampler steps", type=positive_int)
    add_setting(g, "--num-samples", "sampling.num_samples", "number of images", type=positive_int)
    add_setting(g, "--sample-batch-size", "sampling.batch_size", "images per sampler call", type=positive_int)
    g.add_argument(
        "--option",
        dest="settings",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="sampler option, repeatable (e.g. corrector=langevin, snr=0.16): --set sampling.options.KEY=VALUE",
    )


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    """--checkpoint PATH."""
    p.add_argument(
        "--checkpoint",
        type=pathlib.Path,
        default=None,
        help="checkpoint file or exported .safetensors weights (default: the newest readable checkpoint in --workdir)",
    )

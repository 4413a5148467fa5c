"""Glue between the configuration and the library: data splits, trained runs, the digits metric, sampler checks."""

from __future__ import annotations

import pathlib

import torch
from torch import nn

import evaluation
import samplers
from sde_lib import SDE, make_sde
from training import TrainConfig, load_model
from training.data import ImageDataset, load_dataset

from .common import UsageError
from .config import Config, SamplingSection

__all__ = ["check_data_args", "data_split", "load_run", "digits_metric", "sde_of", "check_sampler"]


def check_data_args(dataset: str, root: str | pathlib.Path | None, download: bool = False) -> None:
    """A folder data set needs a root; a given root must exist unless it is a download target."""
    if dataset == "folder" and root is None:
        raise UsageError("--dataset folder needs --data-root DIR (a folder of PNG/JPEG images)")
    if root is not None and not pathlib.Path(root).exists() and not download:
        raise UsageError(f"--data-root {str(root)!r} does not exist")


def data_split(dataset: str, root: str | pathlib.Path | None, split: str, download: bool = False) -> ImageDataset:
    """A split of a data set (training.data.load_dataset): integer `pixels`, `labels`, `images()` in [-1, 1]."""
    check_data_args(dataset, root, download)
    return load_dataset(dataset, root=None if root is None else str(root), split=split, download=download)


def load_run(source: pathlib.Path, device: str) -> tuple[nn.Module, SDE, TrainConfig]:
    """(EMA model, SDE, TrainConfig) of a checkpoint file, an exported .safetensors file or a run directory."""
    if not source.exists():
        raise UsageError(f"{str(source)!r} does not exist (train a model first: python run.py train ...)")
    return load_model(source, ema=True, device=device)


def digits_metric(cache_dir: pathlib.Path, seed: int) -> tuple[evaluation.DigitsMetric, ImageDataset]:
    """The digits feature space (its classifier trained on the train split, cached in cache_dir) and the test
    split."""
    train_set, test_set = data_split("digits", None, "train"), data_split("digits", None, "test")
    classifier, acc = evaluation.load_or_train_digits_classifier(
        cache_dir / "digits_classifier.pt",
        train_set.images(),
        train_set.labels,
        test_set.images(),
        test_set.labels,
        seed=seed,
        progress=True,
    )
    return evaluation.DigitsMetric(classifier, acc, train_set.images(), test_set.images()), test_set


def sde_of(cfg: Config, shape: tuple[int, int, int]) -> SDE:
    """The configuration's SDE on images of `shape`, with GFF noise (its power and DC rule) for nivp / nive: enough
    to check samplers (a data spectrum, like GFF with dc="one", noises every coefficient)."""
    c = cfg.sde
    return make_sde(c.name, shape, N=c.num_scales, beta_min=c.beta_min, beta_max=c.beta_max, sigma_min=c.sigma_min,
                    sigma_max=c.sigma_max, power=cfg.noise.power, dc=cfg.noise.dc)  # fmt: skip


def check_sampler(sampling: SamplingSection, sde: SDE, shape: tuple[int, int, int], steps: int | None = None) -> int:
    """Refuse a sampler that does not apply to the SDE (or bad options) before any work: one run of it with a zero
    score on one image raises the sampler's own ValueError / TypeError. Returns the run's score evaluations."""
    try:
        return samplers.sample(sde, lambda x, t: torch.zeros_like(x), (1, *shape), sampling.method,
                               sampling.steps if steps is None else steps, **sampling.options)[1]  # fmt: skip
    except (ValueError, TypeError) as err:
        raise UsageError(f"--sampler {sampling.method}: {err}") from err

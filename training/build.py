"""Build a run's network, noise covariance and SDE from its TrainConfig (shared by training and loading)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sde_lib import (
    COLOURED_SDE_NAMES,
    SDE,
    Covariance,
    GFFCovariance,
    IdentityCovariance,
    SpectralCovariance,
    largest_pairwise_distance,
    make_sde,
)

from .config import TrainConfig

__all__ = [
    "NOISE_FIT_MAX_IMAGES",
    "model_overrides",
    "build_model",
    "build_sde",
    "needs_spectrum",
    "fit_noise_spectrum",
    "dataset_images",
    "noise_covariance",
    "data_sigma_max",
]

NOISE_FIT_MAX_IMAGES = 10_000


def model_overrides(cfg: TrainConfig) -> dict:
    """The UNetConfig fields the run replaces: cfg.model_overrides, plus conditional=False by default for loss
    "ncsn" (an unconditional network u(x))."""
    overrides = dict(cfg.model_overrides)
    if cfg.loss == "ncsn":
        overrides.setdefault("conditional", False)
    return overrides


def build_model(cfg: TrainConfig) -> nn.Module:
    """models.create_model(cfg.model, **model_overrides(cfg))."""
    from models import create_model

    return create_model(cfg.model, **model_overrides(cfg))


def dataset_images(dataset: Dataset, max_images: int | None = None) -> Tensor:
    """Stack (C, H, W) images of a dataset into (N, C, H, W); at most `max_images`, evenly spaced over it."""
    n = len(dataset)
    if n < 1:
        raise ValueError("the dataset is empty")
    count = n if max_images is None else min(n, int(max_images))
    index = torch.linspace(0, n - 1, count).round().long().tolist()
    return torch.stack([torch.as_tensor(dataset[i]) for i in index])


def fit_noise_spectrum(dataset: Dataset) -> Tensor:
    """Eigenvalues (C, H, W) of SpectralCovariance.from_data on up to NOISE_FIT_MAX_IMAGES training images."""
    images = dataset_images(dataset, NOISE_FIT_MAX_IMAGES).to(torch.float64)
    return SpectralCovariance.from_data(images).eigenvalues()


def needs_spectrum(cfg: TrainConfig) -> bool:
    """Whether the run's SDE uses a data-matched covariance (whose spectrum the checkpoint stores)."""
    return cfg.noise == "data" and cfg.sde in COLOURED_SDE_NAMES


def noise_covariance(cfg: TrainConfig, shape: tuple[int, int, int], spectrum: Tensor | None = None) -> Covariance:
    """The run's Sigma: the identity for the isotropic SDEs, else GFF noise (gff_power, dc) or, for noise="data",
    the fitted `spectrum` (C, H, W)."""
    if cfg.sde not in COLOURED_SDE_NAMES:
        return IdentityCovariance(shape)
    if not needs_spectrum(cfg):
        return GFFCovariance(shape, power=cfg.gff_power, dc=cfg.dc)
    if spectrum is None:
        raise ValueError("noise='data' needs the fitted spectrum (fit_noise_spectrum or the checkpoint's)")
    return SpectralCovariance(shape, spectrum)


def data_sigma_max(cfg: TrainConfig, dataset: Dataset) -> float:
    """sigma_max of a VE / NI-VE run from its training images (docs/math.md §E.8): the largest pairwise distance
    ||Sigma^{-1/2} (x_i - x_j)||, Sigma the run's covariance (the identity for "ve"; for noise="data" the spectrum
    fitted to the same images). About 9.1 for the digits' 1437 training images in [-1, 1] (Euclidean)."""
    images = dataset_images(dataset).to(torch.float64)
    shape = tuple(images.shape[1:])
    cov = noise_covariance(cfg, shape, fit_noise_spectrum(dataset) if needs_spectrum(cfg) else None)
    return largest_pairwise_distance(images, cov)


def build_sde(cfg: TrainConfig, shape: tuple[int, int, int], spectrum: Tensor | None = None) -> SDE:
    """sde_lib.make_sde for the config; noise="data" needs the fitted `spectrum` (C, H, W)."""
    return make_sde(
        cfg.sde,
        tuple(shape),
        cov=noise_covariance(cfg, shape, spectrum) if cfg.sde in COLOURED_SDE_NAMES else None,
        N=cfg.num_scales,
        beta_min=cfg.beta_min,
        beta_max=cfg.beta_max,
        sigma_min=cfg.sigma_min,
        sigma_max=cfg.sigma_max,
    )

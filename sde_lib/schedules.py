"""Discrete noise schedules shared by the SDEs, NI-DDPM and NI-SMLD (docs/math.md §2 and 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .covariance import Covariance

__all__ = ["DDPMSchedule", "ddpm_schedule", "geometric_sigmas", "cas_noise_scale", "largest_pairwise_distance"]


@dataclass(frozen=True)
class DDPMSchedule:
    """betas, alphas = 1 - betas and alphas_cumprod = prod_{s<=t} alpha_s for t = 1..N (float64, index t-1)."""

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor

    @property
    def N(self) -> int:
        return self.betas.shape[0]


def ddpm_schedule(beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> DDPMSchedule:
    """The discrete DDPM schedule of the VP family: beta_t linear from beta_min/N to beta_max/N (docs/math.md §2, 3).

    With the defaults (0.1, 20, 1000) this is DDPM's linear 1e-4 .. 0.02 over T = 1000 steps, and
    beta(t) ~ N * beta_{tN} links it to the continuous NIVP SDE.
    """
    if int(N) < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    if not 0 <= beta_min <= beta_max or beta_max / N >= 1:
        raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max / N < 1, got {beta_min}, {beta_max}, N={N}")
    betas = torch.linspace(beta_min / N, beta_max / N, int(N), dtype=torch.float64)
    alphas = 1.0 - betas
    return DDPMSchedule(betas, alphas, torch.cumprod(alphas, dim=0))


def geometric_sigmas(sigma_min: float, sigma_max: float, N: int) -> Tensor:
    """N noise levels exp(linspace(log sigma_min, log sigma_max, N)), increasing (docs/math.md §4), float64."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if int(N) < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), int(N), dtype=torch.float64))


def cas_noise_scale(eta: float, ratio: float) -> float:
    """beta_cas = sqrt(1 - r^2 (1 - eta)^2) of consistent annealed sampling (docs/math.md §4, E.12).

    With it, (1 - eta)^2 sigma_i^2 + beta_cas^2 sigma_{i+1}^2 = sigma_{i+1}^2 for r = sigma_i / sigma_{i+1}:
    the noise after a step has exactly the next level's variance (Sigma has unit diagonal).
    """
    if not 0 < eta < 1:
        raise ValueError(f"eta must lie in (0, 1), got {eta}")
    if ratio <= 1:
        raise ValueError(f"ratio sigma_i / sigma_(i+1) must be > 1, got {ratio}")
    if eta < 1 - 1 / ratio:
        raise ValueError(f"CAS needs eta >= 1 - 1/r = {1 - 1 / ratio:.6g}, got eta = {eta}")
    return math.sqrt(max(0.0, 1.0 - ratio**2 * (1.0 - eta) ** 2))


def largest_pairwise_distance(x: Tensor, cov: Covariance | None = None, block: int = 1024) -> float:
    """max_{i,j} ||Sigma^{-1/2} (x_i - x_j)|| over images x (N, C, H, W): the largest noise level of NI-SMLD /
    NI-VE by docs/math.md §E.8 (cov None: Sigma = I, the Euclidean distance of VE / SMLD).

    The images are whitened once (cov.inv_sqrt_mul, float64); the squared distances of a block of rows to all
    rows come from the Gram matrix, ||y_i||^2 + ||y_j||^2 - 2 y_i . y_j, so the cost is O(N^2 D) in blocks of
    `block` rows. A singular Sigma (GFF with dc="zero") has no such distance and raises ValueError.
    """
    if x.dim() != 4 or len(x) < 2:
        raise ValueError(f"x must be a (N, C, H, W) batch with N >= 2, got shape {tuple(x.shape)}")
    y = x.detach().to(torch.float64)
    y = (y if cov is None else cov.inv_sqrt_mul(y)).reshape(len(y), -1)
    norms = y.square().sum(dim=1)
    largest = 0.0
    for i in range(0, len(y), int(block)):
        rows = y[i : i + int(block)]
        sq = norms[i : i + len(rows), None] + norms[None, :] - 2.0 * rows @ y.T
        largest = max(largest, float(sq.max()))
    return math.sqrt(max(largest, 0.0))

"""Plain-torch reference of the kernels: the covariance operators (torch.fft) plus the shared noise rule.

Used on the CPU, as the differentiable path, and as the oracle of the Triton kernels in the tests. Arithmetic
runs in float32 (float64 for float64 tensors); float16/bfloat16 results are cast back to the input dtype.
Sample i's white noise is `kernels.noise.white_noise(seed, B, (C, H, W))[i]`, a function of (seed, i) only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.args import (
    check_cov,
    check_images,
    check_like,
    coefficient,
    coefficient_field,
    compute_dtype,
    noise_request,
    noise_seed,
)
from kernels.noise import check_seed, white_noise
from sde_lib.covariance import Covariance

__all__ = ["gff_noise", "perturb", "ni_update", "score_scale", "spectral_update"]


def _per_sample(c: Tensor) -> Tensor:
    return c[:, None, None, None]


def gff_noise(
    cov: Covariance,
    n: int,
    seed: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """n draws of GFF (Sigma-coloured) noise: white eps ~ N(0, I) and g = Sigma^{1/2} eps ~ N(0, Sigma)
    (docs/math.md §1.4).

    Shapes (n, *cov.shape). `dtype` defaults to torch's default dtype, `device` to torch's default device.
    """
    cov, shape, n, seed, device, dtype = noise_request(cov, n, seed, device, dtype)
    eps = white_noise(seed, n, shape, compute_dtype(dtype), device)
    return eps.to(dtype), cov.sqrt_mul(eps).to(dtype)


def perturb(x0: Tensor, a: Tensor | float, s: Tensor | float, cov: Covariance, seed: int) -> tuple[Tensor, Tensor]:
    """Forward perturbation x_t = a x0 + s Sigma^{1/2} eps, eps ~ N(0, I) white; returns (x_t, eps) (docs/math.md §2-4).

    a, s: per-sample coefficients, (B,) tensors or numbers (e.g. a = sqrt(abar_t), s = sqrt(1 - abar_t) for
    NI-DDPM, a = 1, s = sigma for NI-VE). eps is gff_noise(cov, B, seed)'s eps.
    """
    cov = check_cov(cov)
    x0 = check_images(x0, cov, "x0")
    B, work = x0.shape[0], compute_dtype(x0.dtype)
    a = _per_sample(coefficient(a, B, work, x0.device, "a"))
    s = _per_sample(coefficient(s, B, work, x0.device, "s"))
    eps = white_noise(check_seed(seed), B, tuple(x0.shape[1:]), work, x0.device)
    x_t = a * x0.to(work) + cov.sqrt_mul(s * eps)
    return x_t.to(x0.dtype), eps.to(x0.dtype)


def ni_update(
    x: Tensor,
    eps_theta: Tensor,
    c_x: Tensor | float,
    c_eps: Tensor | float,
    c_z: Tensor | float,
    cov: Covariance,
    seed: int | None,
) -> Tensor:
    """One non-isotropic sampler step x_next = c_x x + Sigma^{1/2} (c_eps eps_theta + c_z z) (docs/math.md §2-4).

    z ~ N(0, I) white is gff_noise(cov, B, seed)'s eps. c_*: per-sample (B,) tensors or numbers. seed=None (only
    with c_z zero) or c_z = 0 (a number) is a deterministic step: no noise is drawn.
    """
    cov = check_cov(cov)
    x = check_images(x, cov, "x")
    eps_theta = check_like(eps_theta, x, "eps_theta", "x")
    B, work = x.shape[0], compute_dtype(x.dtype)
    c_x = _per_sample(coefficient(c_x, B, work, x.device, "c_x"))
    c_eps = _per_sample(coefficient(c_eps, B, work, x.device, "c_eps"))
    seed = noise_seed(seed, c_z)
    v = c_eps * eps_theta.to(work)
    if seed is not None:
        z = white_noise(seed, B, tuple(x.shape[1:]), work, x.device)
        v = v + _per_sample(coefficient(c_z, B, work, x.device, "c_z")) * z
    return (c_x * x.to(work) + cov.sqrt_mul(v)).to(x.dtype)


def score_scale(eps_theta: Tensor, s: Tensor | float, cov: Covariance) -> Tensor:
    """The score of an eps-model, -Sigma^{-1/2} eps_theta / s (docs/math.md §2-4); s: marginal std, (B,) or a number.

    Raises ValueError for a singular covariance (no Sigma^{-1/2}).
    """
    cov = check_cov(cov)
    eps_theta = check_images(eps_theta, cov, "eps_theta")
    B, work = eps_theta.shape[0], compute_dtype(eps_theta.dtype)
    s = _per_sample(coefficient(s, B, work, eps_theta.device, "s"))
    return (-cov.inv_sqrt_mul(eps_theta.to(work)) / s).to(eps_theta.dtype)


def spectral_update(
    y: Tensor, e: Tensor, c_y: Tensor | float, c_e: Tensor | float, c_z: Tensor | float, seed: int | None
) -> Tensor:
    """One per-coefficient step of the spectral family, c_y y + c_e e + c_z z elementwise (docs/math.md §11).

    y, e: (B, C, H, W) coefficients in the SDE's spectral basis; c_*: numbers or tensors broadcasting to y's shape;
    z ~ N(0, I) is the white noise of `seed` (kernels.noise; the basis is orthonormal, so it is white there too).
    seed=None (only with c_z zero) or c_z = 0 (a number) draws no noise.
    """
    if not isinstance(y, Tensor) or y.dim() != 4 or not y.is_floating_point():
        raise ValueError(f"y must be a floating-point (B, C, H, W) tensor, got {getattr(y, 'shape', type(y))}")
    e = check_like(e, y, "e", "y")
    work = compute_dtype(y.dtype)
    out = coefficient_field(c_y, y, work, "c_y") * y.to(work) + coefficient_field(c_e, y, work, "c_e") * e.to(work)
    seed = noise_seed(seed, c_z)
    if seed is not None:
        out = out + coefficient_field(c_z, y, work, "c_z") * white_noise(seed, y.shape[0], tuple(y.shape[1:]), work,
                                                                         y.device)  # fmt: skip
    return out.to(y.dtype)

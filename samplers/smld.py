"""NI-SMLD samplers for the VE family: annealed Langevin (ALS) and consistent annealed sampling (CAS) (docs/math.md §4).

Noise levels: sigma_i = std(t_i) at t_i = linspace(T, eps, steps)[i], a geometric sequence from sigma(T) = sigma_max
down to sigma_L = sigma(eps) ~ sigma_min (the model is only evaluated inside [eps, T]). With eps = -sigma_i Sigma^{1/2}
score the white-noise prediction at level i (so sigma_i^2 Sigma s = -sigma_i Sigma^{1/2} eps), each update is one
`ni_update`:

* ALS: alpha_i = eps_step sigma_i^2 / sigma_L^2; n_steps_each times
      x <- x + alpha_i Sigma s + sqrt(2 alpha_i) Sigma^{1/2} z
         = x + Sigma^{1/2}(-alpha_i / sigma_i eps + sqrt(2 alpha_i) z)
* CAS: eta = eps_step / sigma_L^2 in (0, 1), r = sigma_i / sigma_{i+1} (constant), beta_cas = sqrt(1 - r^2 (1 - eta)^2)
  (`sde_lib.cas_noise_scale`, needs eta >= 1 - 1/r; eta = 1 - 1/r is deterministic and equals first-order DDIM for
  VE, eta -> 1 replaces all noise by fresh noise); one step per level
      x <- x + eta sigma_i^2 Sigma s + beta_cas sigma_{i+1} Sigma^{1/2} z,
  and at the last level no noise, with eta = 1 when denoise=True (Tweedie: x + sigma_L^2 Sigma s(x, sigma_L)).

denoise=True ends ALS with x <- x + sigma_L^2 Sigma s(x, sigma_L) (one more evaluation). harmonic_mean=True applies the
correction s <- (sigma_H / sigma) s of docs/math.md §4 (E.11), sigma_H the harmonic mean of sde.smld_sigmas() (the
training levels); it is meant for unconditional (NCSN-style) models only.

Defaults: eps_step = 6.2e-6 and n_steps_each = 5 are NCSNv2's CIFAR-10 values (sigma_L = 0.01, so eta ~ 0.06); CAS
with that eta needs r < 1.066, i.e. at least 134 levels between sigma_max = 50 and 0.01 (fewer raise ValueError).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sde_lib import cas_noise_scale

from .common import DEFAULT_EPS, Run, time_grid

__all__ = ["sample_als", "sample_cas", "noise_levels"]


def noise_levels(run: Run, steps: int | None, eps: float, harmonic_mean: bool) -> tuple:
    """(times, sigmas, eps-scale per level) for ALS / CAS; the scale is sigma_H / sigma_i with harmonic_mean."""
    sde = run.sde
    training_sigmas = sde.smld_sigmas()  # NotApplicableError outside the VE family
    times = time_grid(sde, sde.N if steps is None else steps, eps)
    sigmas = sde.marginal_std(times)
    if harmonic_mean:
        sigma_h = 1 / (1 / training_sigmas).mean()
        scale = sigma_h / sigmas
    else:
        scale = torch.ones_like(sigmas)
    return times, sigmas, scale


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def sample_als(
    run: Run,
    steps: int | None,
    eps_step: float = 6.2e-6,
    n_steps_each: int = 5,
    harmonic_mean: bool = False,
    denoise: bool = True,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Annealed Langevin sampling over `steps` noise levels (default sde.N), n_steps_each updates per level."""
    eps_step = _check_positive("eps_step", eps_step)
    if isinstance(n_steps_each, bool) or not isinstance(n_steps_each, int) or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be an int >= 1, got {n_steps_each!r}")
    times, sigmas, scale = noise_levels(run, steps, eps, harmonic_mean)
    sigma_last = float(sigmas[-1])
    x = run.prior()
    for i in run.steps(range(len(times)), len(times), "als"):
        t, sigma = float(times[i]), float(sigmas[i])
        alpha = eps_step * sigma**2 / sigma_last**2
        for _ in range(n_steps_each):
            x = run.update(x, run.eps(x, t), 1.0, -alpha / sigma * float(scale[i]), math.sqrt(2 * alpha), i, t)
    return _denoise(run, x, float(times[-1]), float(scale[-1]), "denoise") if denoise else x


def sample_cas(
    run: Run,
    steps: int | None,
    eps_step: float = 6.2e-6,
    harmonic_mean: bool = False,
    denoise: bool = True,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Consistent annealed sampling over `steps` >= 2 noise levels (default sde.N), one update per level."""
    eps_step = _check_positive("eps_step", eps_step)
    times, sigmas, scale = noise_levels(run, steps, eps, harmonic_mean)
    if len(times) < 2:
        raise ValueError("cas needs steps >= 2 noise levels (its noise scale uses the ratio sigma_i / sigma_(i+1))")
    sigma_last = float(sigmas[-1])
    eta = eps_step / sigma_last**2
    ratio = float(sigmas[0] / sigmas[1])
    beta = cas_noise_scale(eta, ratio)
    x = run.prior()
    last = len(times) - 1
    for i in run.steps(range(len(times)), len(times), "cas"):
        t, sigma = float(times[i]), float(sigmas[i])
        if i == last and denoise:
            return _denoise(run, x, t, float(scale[i]), i)
        c_z = 0.0 if i == last else beta * float(sigmas[i + 1])
        x = run.update(x, run.eps(x, t), 1.0, -eta * sigma * float(scale[i]), c_z, i, t)
    return x


def _denoise(run: Run, x: Tensor, t: float, scale: float, step: int | str) -> Tensor:
    """Tweedie at the last level: x + sigma_L^2 Sigma s(x, sigma_L) = x - sigma_L Sigma^{1/2} eps (eps scaled by the
    harmonic-mean correction `scale`), through `sde.denoise_coefficients`."""
    c_x, c_eps = run.sde.denoise_coefficients(run.time(t))
    return run.update(x, run.eps(x, t), c_x, c_eps * scale, 0.0, step, t)

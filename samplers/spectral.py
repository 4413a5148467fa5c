"""The reverse-time samplers of the spectral family, per coefficient of its basis (docs/math.md §11).

With y = U x, per coefficient k the scales a_k(t), s_k(t), f_k = d log a_k / dt, lambda_k' and the white-noise
prediction e = U eps (the score is -e_k / s_k), the forward SDE dy_k = f_k y_k dt + g_k dw_k, g_k^2 = -2 lambda_k'
s_k^2, has

    probability flow:  dy_k/dt = f_k y_k - lambda_k' s_k e_k
    reverse SDE:       dy_k = (f_k y_k - 2 lambda_k' s_k e_k) dt + g_k dw_bar

* euler_maruyama, from t down to t - dt:  y <- y - (f y - 2 lambda' s e) dt + g sqrt(dt) z
* ancestral, from t down to u < t: the exact Gaussian posterior of y_u given y_t and x0 = (y_t - s_t e) / a_t under
  the forward chain y_t = r y_u + sigma xi (r = a_t / a_u, sigma^2 = s_t^2 - r^2 s_u^2 > 0 as lambda decreases):
      y_u ~ N((sigma^2 a_u x0 + r s_u^2 y_t) / s_t^2,  s_u^2 sigma^2 / s_t^2);
  into the data (u = 0: a = 1, s = 0) it is x0 itself. On the discrete DDPM grid this is DDPM's posterior sampler.

The time grid is `dpm_solver.solver_times` on the SDE's clock (`log_snr`: the mean lambda for the spectral family);
z is the white noise of a fresh per-step seed (kernels.noise), drawn in the basis (U is orthonormal); each step is one
`kernels.spectral_update` (c_y y + c_e e + c_z z per coefficient).
"""

from __future__ import annotations

import torch
from torch import Tensor

import kernels

from .common import Run

__all__ = ["SPECTRAL_PREDICTORS", "flow_coefficients", "spectral_probability_flow_drift", "sample_spectral_pc"]

SPECTRAL_PREDICTORS = ("euler_maruyama", "ancestral")


def flow_coefficients(sde, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(f, lambda', a, s) per coefficient at times t (B,), in `like`'s dtype and device; a batch at one time (every
    sampler step, every likelihood evaluation) is computed once and broadcast."""
    t = t.detach().double().cpu()
    if len(t) > 1 and bool(t.min() == t.max()):
        t = t[:1]
    f, dlam = sde.spectral_rates(t)
    a, s = sde.spectral_scales(t)
    return tuple(v.to(like.device, like.dtype) for v in (f, dlam, a, s))


def spectral_probability_flow_drift(sde, eps_fn, x: Tensor, t: Tensor) -> Tensor:
    """dx/dt = U^T (f y - lambda' s e), y = U x, e = U eps_fn(x, t) (module docstring)."""
    f, dlam, _, s = flow_coefficients(sde, t, x)
    return sde.from_spectral(f * sde.to_spectral(x) - dlam * s * sde.to_spectral(eps_fn(x, t)))


def sample_spectral_pc(run: Run, times: Tensor, predictor: str, denoise: bool) -> Tensor:
    """Euler-Maruyama or ancestral steps through `times` (float64, T down to eps) and on to t = 0; denoise=True
    drops the noise of the last step (module docstring)."""
    if predictor not in SPECTRAL_PREDICTORS:
        raise ValueError(f"the spectral family's predictors are {SPECTRAL_PREDICTORS}, got {predictor!r}")
    sde = run.sde
    ends = torch.cat([times[1:], times.new_zeros(1)])
    x = run.prior()
    y = sde.to_spectral(x)
    for k in run.steps(range(len(times)), len(times), f"pc {predictor}"):
        t, u, last = float(times[k]), float(ends[k]), k == len(times) - 1
        tt = run.time(t)
        f, dlam, a, s = flow_coefficients(sde, tt, y)
        e = sde.to_spectral(run.eps(x, tt))
        if predictor == "euler_maruyama":
            dt = t - u
            c_y, c_e, c_z = 1 - f * dt, 2 * dlam * s * dt, (-2 * dlam * s**2 * dt).clamp_min(0).sqrt()
        elif u == 0:
            c_y, c_e, c_z = 1 / a, -s / a, 0.0
        else:
            a_u, s_u = (v.to(y) for v in sde.spectral_scales(torch.tensor([u], dtype=torch.float64)))
            r = a / a_u
            var = s**2 - (r * s_u) ** 2
            c_y, c_e, c_z = (var * a_u / a + r * s_u**2) / s**2, -var * a_u / (a * s), (s_u**2 * var).sqrt() / s
        noise = not (denoise and last) and not isinstance(c_z, float)
        y = kernels.spectral_update(y, e, c_y, c_e, c_z if noise else 0.0, run.seed() if noise else None)
        x = run.accept(sde.from_spectral(y), k, t)
    return x

"""Predictor-corrector samplers of the reverse SDE (score_sde_pytorch's, with Sigma^{1/2}-coloured noise;
docs/math.md §3, 4).

Time grid: the model is evaluated at t_k = linspace(T, eps, steps)[k] (schedule="time"), or at the times uniform in
log-SNR warped by u -> u^warp (schedule="logsnr": dpm_solver.solver_times, the grid of `dpm2m`; warp < 1 puts more
steps near t = eps); predictor step k moves from t_k to t_{k+1} (t_steps = 0), after `n_corrector` corrector steps
at t_k. With eps = T / N and steps = N the grid is the
discrete one, t_k = (i + 1) T / N with i = sde.discrete_index(t_k) = N - 1 - k. All steps are written with
eps = -std Sigma^{1/2} s (so Sigma s = -Sigma^{1/2} eps / std):

* euler_maruyama, dt = t_k - t_{k+1}:
      x <- x - f dt + g^2 dt Sigma s + g sqrt(dt) Sigma^{1/2} z
         = (x - f dt) + Sigma^{1/2}(-g^2 dt / std eps + g sqrt(dt) z)
* reverse_diffusion (sde.discretize: f, G per discrete level): x <- (x - f) + Sigma^{1/2}(-G^2 / std eps + G z)
* ancestral (one discrete level i per step, so steps = sde.N):
      VP:  x <- (x + beta_i Sigma s) / sqrt(1 - beta_i) + sqrt(beta_i) Sigma^{1/2} z
      VE:  x <- x + (sigma_i^2 - sigma_{i-1}^2) Sigma s
                  + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) Sigma^{1/2} z
* langevin corrector (preconditioned by Sigma, which leaves p_t invariant; docs/math.md §4):
      x <- x + e Sigma s + sqrt(2 e) Sigma^{1/2} z,  e = 2 alpha (snr ||z|| / ||Sigma^{1/2} s||)^2,
  with the whitened score norm ||Sigma^{1/2} s|| = ||eps|| / std, ||z|| replaced by its root mean square sqrt(D),
  both per sample (score_sde_pytorch averages the norms over the batch, which couples the samples);
  alpha = 1 - beta_i for the VP family, 1 for VE.
* ald corrector (annealed Langevin): the same step with e = 2 alpha (snr std)^2.

denoise=True drops the noise of the last update, as score_sde_pytorch's `x_mean` (the last Euler-Maruyama step
from t = eps to 0 is then a Tweedie denoising step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import DEFAULT_EPS, Run, check_eps
from .dpm_solver import solver_times
from .spectral import sample_spectral_pc

__all__ = ["PREDICTORS", "CORRECTORS", "sample_pc"]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")
DISCRETE_PREDICTORS = ("reverse_diffusion", "ancestral")


def sample_pc(
    run: Run,
    steps: int | None,
    predictor: str = "euler_maruyama",
    corrector: str = "none",
    snr: float = 0.16,
    n_corrector: int = 1,
    denoise: bool = True,
    eps: float = DEFAULT_EPS,
    schedule: str = "time",
    warp: float = 1.0,
) -> Tensor:
    """Predictor-corrector sampling of the reverse SDE from N(0, c^2 Sigma) (module docstring; docs/math.md §3, 4)."""
    sde = run.sde
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector are both 'none': nothing would move x")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 1:
        raise ValueError(f"n_corrector must be an int >= 1, got {n_corrector!r}")
    if not isinstance(snr, (int, float)) or not snr > 0:
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    steps = sde.N if steps is None else steps
    times = solver_times(sde, steps, check_eps(sde, eps), schedule, warp)  # "time": linspace(T, eps, steps)
    if sde.per_coefficient:  # the spectral family: its steps per coefficient (samplers.spectral)
        if corrector != "none":
            raise ValueError(f"{sde.name} has no Langevin corrector here (corrector must be 'none')")
        return sample_spectral_pc(run, times, predictor, denoise)
    if predictor in DISCRETE_PREDICTORS:
        levels = sde.discrete_index(times)
        if not torch.equal(levels, torch.arange(sde.N - 1, -1, -1)):
            raise ValueError(
                f"predictor {predictor!r} takes one discrete level of the SDE per step: it needs steps = sde.N "
                f"= {sde.N} and eps <= T / N (got steps = {steps}, eps = {eps}); use 'euler_maruyama' otherwise"
            )
    ends = torch.cat([times[1:], times.new_zeros(1)])
    x = run.prior()
    n_corr = n_corrector if corrector != "none" else 0
    for k in run.steps(range(steps), steps, f"pc {predictor}/{corrector}"):
        t, last = float(times[k]), k == steps - 1
        for j in range(n_corr):
            final = denoise and last and predictor == "none" and j == n_corr - 1
            x = _corrector_step(run, x, t, corrector, snr, drop_noise=final, step=k)
        if predictor != "none":
            x = _predictor_step(run, x, t, float(t - ends[k]), predictor, drop_noise=denoise and last, step=k)
    return x


def _predictor_step(run: Run, x: Tensor, t: float, dt: float, predictor: str, drop_noise: bool, step: int) -> Tensor:
    """One reverse step from t by dt: Euler-Maruyama / reverse diffusion through the reverse SDE's coefficients
    (drift f + c Sigma^{1/2} eps, diffusion G; `sde.reverse`), or the SDE's own ancestral step."""
    sde = run.sde
    tt = run.time(t)
    if predictor == "ancestral":
        c_x, c_eps, c_z = sde.ancestral_coefficients(tt, sde.marginal_std(tt))
        x_lin = x
    else:
        discrete = predictor == "reverse_diffusion"
        f, c, G = sde.reverse(run.model).coefficients(x, tt, discrete=discrete)
        h = 1.0 if discrete else dt
        x_lin, c_x, c_eps, c_z = x - f * h, 1.0, -c * h, G * math.sqrt(h)
    return run.update(x_lin, run.eps(x, tt), c_x, c_eps, 0.0 if drop_noise else c_z, step, t)


def _corrector_step(run: Run, x: Tensor, t: float, corrector: str, snr: float, drop_noise: bool, step: int) -> Tensor:
    sde = run.sde
    tt = run.time(t)
    std = sde.marginal_std(tt)
    eps = run.eps(x, tt)
    alpha = sde.langevin_alpha(tt)
    if corrector == "langevin":
        D = math.prod(x.shape[1:])
        eps_norm = eps.flatten(1).norm(dim=1)
        size = 2 * alpha * (snr * math.sqrt(D) * std / eps_norm) ** 2
    else:
        size = 2 * alpha * (snr * std) ** 2
    c_z = torch.zeros_like(size) if drop_noise else torch.sqrt(2 * size)
    return run.update(x, eps, 1.0, -size / std, c_z, step, t)

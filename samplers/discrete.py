"""NI-DDPM ancestral sampling and NI-DDIM on the discrete schedule of a VP SDE (docs/math.md §2).

Discrete index and time: level i in {0, .., N-1} is DDPM's timestep i + 1 (`sde.discrete_alphas_cumprod()`,
index i = t - 1), and the model is evaluated at the continuous time t_i = (i + 1) T / N, for which
sde.discrete_index(t_i) = i exactly (the level sde.discretize uses there) and beta(t_i) ~ N beta_i (docs/math.md §3).
K < N steps use the evenly spaced levels tau_k = floor((k + 1) N / K) - 1, k = 0..K-1 (so tau_{K-1} = N - 1),
with abar'_k = abar_{tau_k}, abar'_{-1} = 1 and beta'_k = 1 - abar'_k / abar'_{k-1}.

Both samplers start from x_T ~ N(0, Sigma) and, with eps the model's white-noise prediction, take the steps
(as one `ni_update` each; the step from level k to k - 1):

    NI-DDPM:  x <- (x - beta' / sqrt(1 - abar') Sigma^{1/2} eps) / sqrt(alpha') + sigma Sigma^{1/2} z,
              sigma^2 = beta~' = (1 - abar'_{k-1}) / (1 - abar'_k) beta' ("posterior") or beta' ("beta"),
              z = 0 at k = 0;
    NI-DDIM:  x <- sqrt(abar'_{k-1}) x0_hat + sqrt(1 - abar'_{k-1} - sigma^2) Sigma^{1/2} eps + sigma Sigma^{1/2} z,
              x0_hat = (x - sqrt(1 - abar'_k) Sigma^{1/2} eps) / sqrt(abar'_k),
              sigma = eta sqrt((1 - abar'_{k-1}) / (1 - abar'_k)) sqrt(1 - abar'_k / abar'_{k-1}).

The last step (to abar = 1) returns x0_hat in both, so no separate denoising is needed. eps is the model's
prediction at the chain's own noise scale sqrt(1 - abar_i) (`sde.discrete_marginal`): a network trained with the
NI-DDPM loss is used as it is, any other model through its score (samplers.score_model).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Run

__all__ = ["timestep_subsequence", "level_time", "ddpm_coefficients", "ddim_coefficients", "sample_ddpm", "sample_ddim"]

VARIANCES = ("posterior", "beta")


def timestep_subsequence(N: int, steps: int) -> Tensor:
    """tau_k = floor((k + 1) N / steps) - 1 for k = 0..steps-1: increasing levels ending at N - 1 (int64)."""
    if not 1 <= steps <= N:
        raise ValueError(f"steps must lie in [1, N = {N}] for the discrete samplers, got {steps}")
    return torch.div((torch.arange(steps) + 1) * N, steps, rounding_mode="floor") - 1


def level_time(sde, level: int) -> float:
    """The continuous time t_i = (i + 1) T / N of discrete level i: `sde.discrete_time`, as in training."""
    return float(sde.discrete_time(level))


def ddpm_coefficients(abar: float, abar_prev: float, var: str = "posterior") -> tuple[float, float, float]:
    """(c_x, c_eps, c_z) of the NI-DDPM step abar -> abar_prev (module docstring; docs/math.md §2)."""
    if var not in VARIANCES:
        raise ValueError(f"var must be one of {VARIANCES}, got {var!r}")
    beta = 1 - abar / abar_prev
    alpha = 1 - beta
    variance = beta * (1 - abar_prev) / (1 - abar) if var == "posterior" else beta
    return 1 / math.sqrt(alpha), -beta / (math.sqrt(1 - abar) * math.sqrt(alpha)), math.sqrt(variance)


def ddim_coefficients(abar: float, abar_prev: float, eta: float = 0.0) -> tuple[float, float, float]:
    """(c_x, c_eps, c_z) of the NI-DDIM step abar -> abar_prev (module docstring; docs/math.md §2)."""
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
    c_x = math.sqrt(abar_prev / abar)
    c_eps = math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) - c_x * math.sqrt(1 - abar)
    return c_x, c_eps, sigma


def _levels(run: Run, steps: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(levels tau_k, abar_{tau_k}, abar_{tau_{k-1}} with abar_{tau_{-1}} = 1) of the SDE's NI-DDPM chain."""
    abar_all = run.sde.discrete_alphas_cumprod()  # NotApplicableError without a discrete DDPM chain
    levels = timestep_subsequence(run.sde.N, run.sde.N if steps is None else steps)
    abar = abar_all[levels]
    return levels, abar, torch.cat([abar.new_ones(1), abar[:-1]])


def _sample(run: Run, steps: int | None, coefficients, name: str) -> Tensor:
    """x_T ~ N(0, Sigma), then one ni_update per level with (c_x, c_eps, c_z) = coefficients(abar, abar_prev, k);
    the model's eps is read at the chain's own scale sqrt(1 - abar_i) (`sde.discrete_marginal`)."""
    levels, abar, abar_prev = _levels(run, steps)
    x = run.prior()
    for k in run.steps(reversed(range(len(levels))), len(levels), name):
        t = level_time(run.sde, int(levels[k]))
        c_x, c_eps, c_z = coefficients(float(abar[k]), float(abar_prev[k]), k)
        x = run.update(x, run.eps(x, t, run.sde.discrete_marginal), c_x, c_eps, c_z, k, t)
    return x


def sample_ddpm(run: Run, steps: int | None, var: str = "posterior") -> Tensor:
    """NI-DDPM ancestral sampling over `steps` evenly spaced levels (default sde.N; module docstring)."""
    if var not in VARIANCES:
        raise ValueError(f"var must be one of {VARIANCES}, got {var!r}")

    def coefficients(abar: float, abar_prev: float, k: int) -> tuple[float, float, float]:
        c_x, c_eps, c_z = ddpm_coefficients(abar, abar_prev, var)
        return c_x, c_eps, c_z if k > 0 else 0.0

    return _sample(run, steps, coefficients, "ddpm")


def sample_ddim(run: Run, steps: int | None, eta: float = 0.0) -> Tensor:
    """NI-DDIM over `steps` evenly spaced levels (default sde.N); eta = 0 is deterministic (module docstring)."""
    if not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return _sample(run, steps, lambda abar, abar_prev, k: ddim_coefficients(abar, abar_prev, eta), "ddim")

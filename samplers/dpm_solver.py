"""DPM-Solver++(2M): a multistep exponential integrator of the probability-flow ODE, for Sigma != I
(docs/math.md §3, 4), per coefficient of the SDE's spectral basis (§11).

Derivation. Every SDE here is linear, x_t | x_0 ~ N(a(t) x_0, std(t)^2 Sigma) with drift f(t) x, f = d log a / dt,
and g^2 = d std^2/dt - 2 f std^2 = -2 std^2 d lambda/dt for the half log-SNR lambda(t) = log(a / std). With
eps = -std Sigma^{1/2} s the probability-flow ODE is

    dx/dt = f x + g^2 / (2 std) Sigma^{1/2} eps = f x - std (d lambda/dt) Sigma^{1/2} eps,

the isotropic one with eps replaced by Sigma^{1/2} eps (Sigma is constant, so it passes through every integral).
In the data prediction x0(x, t) = (x - std Sigma^{1/2} eps) / a, variation of constants gives, from s to t,

    x_t = (std_t / std_s) x_s + std_t int_{lambda_s}^{lambda_t} e^{lambda} x0 d lambda,

and holding x0 constant (first order) or linear in lambda through the last two steps (2M) gives (h = lambda_t -
lambda_s, r = h_prev / h, phi = 1 - e^{-h})

    order 1:  x_t = (std_t / std_s) x_s + a_t phi x0_s   (= DDIM, eta = 0: a_t x0_s + std_t Sigma^{1/2} eps_s)
    order 2:  x_t = (std_t / std_s) x_s + a_t phi [(1 + 1/(2r)) x0_s - 1/(2r) x0_prev].

As x0_j = (x_j - std_j Sigma^{1/2} eps_j) / a_j is linear in the stored (x_j, eps_j), a step is sum_j u_j x_j +
Sigma^{1/2} sum_j v_j eps_j. It is taken in the SDE's spectral basis (y = `to_spectral`(x), e = U eps), where
Sigma^{1/2} is diagonal and the same formula holds per coefficient k with a_k, s_k, lambda_k and h_k = Delta lambda_k
(docs/math.md §11): y_next = sum_j u_j,k y_j + v_j,k e_j, one `kernels.spectral_update` per history entry, two basis
transforms a step (eps in, the state out). For the scalar SDEs every u_j is a number and v_j = v_j sqrt(Sigma_k):
the step above, exactly.

Grid: the model is evaluated at t_0 = T > ... > t_{K-1} = eps, uniform in t ("time"), in lambda ("logsnr") or in
rho(lambda) = log(1 + e^{lambda - lambda_0}), lambda_0 = -3.5 ("signal", the default here and in samplers.unipc):
rho_k = rho(lambda(T)) + (rho(lambda(eps)) - rho(lambda(T))) (k / (K-1))^warp (rho = lambda for "logsnr"), where
warp < 1 spaces the steps more closely at low noise (warp = 1: uniform, as DPM-Solver). "signal" is uniform in lambda
above lambda_0 and uniform in the signal amplitude e^lambda = a / std below it, where the data prediction has barely
left the data mean (docs/math.md §3.1). The first step is first order (no history).
denoise=True takes the last step from eps to a = 1, std = 0 (phi = 1, first order: x = x0(x_eps, eps));
denoise=False ends at t = eps, with the K evaluations at the first K of K + 1 grid points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import kernels

from .common import DEFAULT_EPS, Run, check_eps

__all__ = ["SCHEDULES", "SIGNAL_LOGSNR", "signal_clock", "solver_times", "exponential_step_weights", "sample_dpm2m"]

SCHEDULES = ("logsnr", "time", "signal")
SIGNAL_LOGSNR = -3.5  # lambda_0 of the "signal" grid: below it, equal steps in e^lambda (docs/math.md §3.1)


def signal_clock(lam: Tensor) -> Tensor:
    """rho(lambda) = log(1 + e^{lambda - lambda_0}): about lambda - lambda_0 above lambda_0, e^{lambda - lambda_0}
    below (docs/math.md §3.1)."""
    return torch.nn.functional.softplus(lam - SIGNAL_LOGSNR)


def solver_times(sde, points: int, eps: float, schedule: str = "logsnr", warp: float = 1.0) -> Tensor:
    """`points` times from T down to eps (float64): uniform in t ("time"), or in lambda ("logsnr") or in
    `signal_clock`(lambda) ("signal"), warped by u -> u^warp.

    lambda(t) is decreasing; its inverse is found by bisection on [eps, T], so any SDE works.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(warp, bool) or not isinstance(warp, (int, float)) or not warp > 0:
        raise ValueError(f"warp must be a positive number, got {warp!r}")
    if points == 1:
        return torch.tensor([sde.T], dtype=torch.float64)
    if schedule == "time":
        return torch.linspace(sde.T, eps, points, dtype=torch.float64)
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    if schedule == "signal":
        ends = signal_clock(ends)
    target = ends[0] + (ends[1] - ends[0]) * torch.linspace(0, 1, points, dtype=torch.float64) ** warp
    if schedule == "signal":  # back from rho to lambda
        target = SIGNAL_LOGSNR + torch.log(torch.expm1(target))
    lo = torch.full_like(target, eps)
    hi = torch.full_like(target, sde.T)
    for _ in range(100):
        mid = (lo + hi) / 2
        above = sde.log_snr(mid) > target  # lambda(mid) > target: the solution lies later than mid
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    times = (lo + hi) / 2
    times[0], times[-1] = sde.T, eps
    return times


def exponential_step_weights(a: list, std: list, lam: list, a_t, std_t, lam_t, order: int) -> tuple[list, list]:
    """Weights (u, v) with x_t = sum_j u_j x_j + Sigma^{1/2} sum_j v_j eps_j over the history j = current, previous.

    a, std, lam list the current point first, then (for order 2) the previous one (module docstring); each entry is
    a number, or a float64 tensor of per-coefficient values in the SDE's spectral basis (docs/math.md §11), where
    the same formula holds coefficient by coefficient with eps_j's coefficients and Sigma^{1/2} = I. Numbers give
    numbers. lam_t = inf (std_t = 0) is the step to the data (phi = 1).
    """
    numbers = not any(isinstance(v, Tensor) for v in [*a, *std, *lam, a_t, std_t, lam_t])
    a, std, lam = ([torch.as_tensor(v, dtype=torch.float64) for v in vs] for vs in (a, std, lam))
    a_t, std_t, lam_t = (torch.as_tensor(v, dtype=torch.float64) for v in (a_t, std_t, lam_t))
    h = lam_t - lam[0]
    phi = -torch.expm1(-h)
    if order == 1:
        w = [torch.ones_like(h)]
    else:
        r = (lam[0] - lam[1]) / h
        w = [1 + 1 / (2 * r), -1 / (2 * r)]
    u = [a_t * phi * w[j] / a[j] for j in range(len(w))]
    u[0] = u[0] + std_t / std[0]
    v = [-a_t * phi * w[j] * std[j] / a[j] for j in range(len(w))]
    return ([float(c) for c in u], [float(c) for c in v]) if numbers else (u, v)


def solver_grid(
    sde, steps: int, eps: float, schedule: str, warp: float, denoise: bool
) -> tuple[Tensor, list[float], list[float], list[float]]:
    """(times of the `steps` evaluations, and a, std, lambda at every grid point): `solver_times` with one more
    point when denoise=False, and with denoise=True the final target t = 0 (a = 1, std = 0, lambda = inf)."""
    times = solver_times(sde, steps if denoise else steps + 1, eps, schedule, warp)
    a, std, lam = sde.mean_coeff(times).tolist(), sde.marginal_std(times).tolist(), sde.log_snr(times).tolist()
    if denoise:
        a, std, lam = a + [1.0], std + [0.0], lam + [float("inf")]
    return times, a, std, lam


def spectral_grid(sde, steps: int, eps: float, schedule: str, warp: float, denoise: bool, per_frequency: bool):
    """(times of the `steps` evaluations, and per-coefficient a, s, lambda at every grid point, each (P, C, H, W) or
    broadcastable, float64): `solver_times` on the SDE's `log_snr` clock (the mean lambda over the coefficients for
    the spectral family), one more point when denoise=False, the data (a = 1, s = 0, lambda = inf) when True.
    per_frequency=False replaces lambda_k by its mean over the coefficients: the scalar-lambda step."""
    times = solver_times(sde, steps if denoise else steps + 1, eps, schedule, warp)
    a, s = sde.spectral_scales(times)
    if not bool((s > 0).all()):
        raise ValueError(f"dpm2m needs every noise scale s_k > 0; {sde.name} has a coefficient that is never "
                         "noised (e.g. GFF with dc='zero'), so lambda_k is infinite there")  # fmt: skip
    a, s = a.expand(len(times), *a.shape[1:]), s.expand(len(times), *s.shape[1:])
    lam = a.log() - s.log()
    if not per_frequency:
        lam = lam.flatten(1).mean(1).reshape(-1, *[1] * (lam.dim() - 1)).expand(lam.shape)
    if denoise:
        a, s = torch.cat([a, torch.ones_like(a[:1])]), torch.cat([s, torch.zeros_like(s[:1])])
        lam = torch.cat([lam, torch.full_like(lam[:1], math.inf)])
    return times, a, s, lam


def sample_dpm2m(
    run: Run,
    steps: int | None,
    order: int = 2,
    schedule: str | None = None,
    warp: float = 1.0,
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
    per_frequency: bool = True,
    clip_x0: float | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (order=2) or DPM-Solver++(1) = DDIM (order=1) with `steps` model evaluations (default 20),
    per coefficient of the SDE's spectral basis (docs/math.md §11): a step h_k = Delta lambda_k per coefficient on
    the shared time grid. per_frequency=False takes the mean lambda's step for every coefficient (the scalar-lambda
    solver, for comparison: it does not converge on the blurring schedules). schedule None is the SDE's
    `few_step_grid`: "signal", or "logsnr" for the spectral family.

    clip_x0 = c clips each data prediction x0 = U^T ((y - s e) / a) to [-c, c] in pixel space (DPM-Solver++'s
    thresholding, for images in [-1, 1]: c = 1) and steps with the eps that this x0 implies, e = (y - a U x0) / s.
    An eps-network's error is multiplied by s_k / a_k in x0, up to 1 / d_min = 1000 on the blurred frequencies of
    blur and heat; their networks predict v by default, which keeps x0 bounded (sde_lib.default_prediction)."""
    sde = run.sde
    eps = check_eps(sde, eps)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or clip_x0 <= 0):
        raise ValueError(f"clip_x0 must be None or a positive number, got {clip_x0!r}")
    steps = 20 if steps is None else steps
    schedule = sde.few_step_grid if schedule is None else schedule
    times, a, std, lam = spectral_grid(sde, steps, eps, schedule, warp, denoise, per_frequency)
    x = run.prior()
    y = sde.to_spectral(x)
    history: list[tuple[Tensor, Tensor]] = []  # (y_j, eps_j) in the spectral basis, newest first
    for k in run.steps(range(steps), steps, "dpm2m"):  # two transforms a step: eps in, the new state out
        t = float(times[k])
        e = sde.to_spectral(run.eps(x, t))
        if clip_x0 is not None:  # two more transforms: x0 out to pixels and back
            a_k, s_k = a[k].to(y), std[k].to(y)
            x0 = sde.from_spectral((y - s_k * e) / a_k).clamp(-clip_x0, clip_x0)
            e = (y - a_k * sde.to_spectral(x0)) / s_k
        history = [(y, e)] + history[:1]
        use = 2 if order == 2 and k >= 1 and bool(torch.isfinite(lam[k + 1]).all()) else 1  # first order into the data
        idx = [k, k - 1][:use]
        u, v = exponential_step_weights(
            [a[j] for j in idx], [std[j] for j in idx], [lam[j] for j in idx], a[k + 1], std[k + 1], lam[k + 1], use
        )
        y = sum(kernels.spectral_update(y_j, e_j, u_j, v_j, 0.0, None) for u_j, v_j, (y_j, e_j) in zip(u, v, history))
        x = run.accept(sde.from_spectral(y), k, t)
    return x

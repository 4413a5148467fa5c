"""UniPC: a multistep exponential integrator of the probability-flow ODE with a corrector that costs no evaluation,
for Sigma != I (docs/math.md §3.1).

Step. As in samplers.dpm_solver (data prediction, Sigma^{1/2} eps form), from s to t, with the half log-SNR lambda,
h = lambda_t - lambda_s and x0_j = (x_j - std_j Sigma^{1/2} eps_j) / a_j the data prediction of evaluation j,

    x_t = (std_t / std_s) x_s + a_t int_0^h e^{-(h - u)} x0(lambda_s + u) du.

Predictor of order p (UniP-p): x0 is replaced by the polynomial in lambda through the last p evaluations, so

    x_t = (std_t / std_s) x_s + a_t sum_j w_j x0_j,    w_j = int_0^h e^{-(h - u)} l_j(u) du,

with l_j the Lagrange basis polynomials of the nodes u_j = lambda_j - lambda_s (`interpolation_weights`). The
weights integrate polynomials of degree < p exactly, so the local error is O(h^{p + 1}); p = 1 is DDIM
(DPM-Solver++(1)).
Corrector (UniC): once the model has been evaluated at the predicted x_t, the same step from s is recomputed with the
polynomial through x0_t as well (p + 1 nodes, order p + 1). x0_t stays the one evaluated at the predicted point, so
the corrector needs no evaluation; the next predictor starts from the corrected x_t. With the coefficients solved
exactly at every order, as here, the B(h) of Zhao et al. (2023) cancels (it enters only their simplified rho = 1/2
at orders 1 and 2).

One update per step. corrected - predicted = a_t sum_j (w^C_j - w^P_j) x0_j, and each x0_j is linear in the stored
(x_j, eps_j), so the corrector at t_k and the predictor from t_k to t_{k+1} together are one `ni_update` of
x_lin = sum_j u_j x_j and eps_lin = sum_j v_j eps_j over the predicted points x_j (where the model was evaluated):
Sigma^{1/2} is applied once per step.

Warm-up and end: the order is min(order, evaluations so far). The grid is `solver_times` (default "signal",
docs/math.md §3.1). denoise=True ends with the step from eps to a = 1, std = 0, which is first order,
x = x0 at eps (Tweedie's E[x_0 | x_eps]), and is not corrected; denoise=False ends at t = eps with the K evaluations
at the first K of K + 1 grid points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import DEFAULT_EPS, Run, check_eps
from .dpm_solver import solver_grid

__all__ = ["CORRECTORS", "exponential_moments", "interpolation_weights", "sample_unipc"]

CORRECTORS = ("unic", "none")


def exponential_moments(h: float, n: int) -> list[float]:
    """m_i = int_0^h e^{-(h - u)} (u / h)^i du for i < n, float64 (h = inf: m_0 = 1, the step into the data).

    m_0 = 1 - e^{-h} and m_i = 1 - (i / h) m_{i-1} for h >= 1; for h < 1, where that recursion cancels, the series
    m_i = h e^{-h} sum_{j >= 0} h^j / ((i + j + 1) j!).
    """
    if not h > 0:
        raise ValueError(f"h must be positive, got {h!r}")
    if math.isinf(h):
        if n > 1:
            raise ValueError("the step into the data (h = inf) is first order")
        return [1.0]
    if h >= 1:
        out = [-math.expm1(-h)]
        for i in range(1, n):
            out.append(1 - i / h * out[-1])
        return out
    out = []
    for i in range(n):
        total, term, j = 0.0, 1.0, 0  # term = h^j / j!
        while True:
            total += term / (i + j + 1)
            j += 1
            term *= h / j
            if term < 1e-18 * total:
                break
        out.append(h * math.exp(-h) * total)
    return out


def interpolation_weights(nodes: list[float], h: float) -> list[float]:
    """w_j = int_0^h e^{-(h - u)} l_j(u) du, l_j the Lagrange basis polynomials of the distinct `nodes` u_j.

    sum_j w_j P(u_j) = int_0^h e^{-(h - u)} P(u) du for every polynomial P of degree < len(nodes): with v = u / h,
    the weights solve V^T w = m, V_ji = (u_j / h)^i, m = `exponential_moments`(h).
    """
    moments = exponential_moments(h, len(nodes))
    if len(nodes) == 1:
        return moments
    v = torch.tensor(nodes, dtype=torch.float64) / h
    vandermonde = v[:, None] ** torch.arange(len(nodes), dtype=torch.float64)
    return torch.linalg.solve(vandermonde.T, torch.tensor(moments, dtype=torch.float64)).tolist()


def sample_unipc(
    run: Run,
    steps: int | None,
    order: int = 3,
    corrector: str = "unic",
    schedule: str = "signal",
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
) -> Tensor:
    """UniPC (predictor of `order` in {1, 2, 3}, corrector "unic" or "none") with `steps` model evaluations
    (default 10); module docstring."""
    sde = run.sde
    eps = check_eps(sde, eps)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    steps = 10 if steps is None else steps
    times, a, std, lam = solver_grid(sde, steps, eps, schedule, 1.0, denoise)
    x = run.prior()
    stored: dict[int, tuple[Tensor, Tensor]] = {}  # k -> (predicted x_k, eps_k), the last order + 1
    last: tuple[list[int], list[float]] | None = None  # nodes and weights of the predictor that gave x_k
    for k in run.steps(range(steps), steps, "unipc"):
        t = float(times[k])
        stored[k] = (x, run.eps(x, t))
        stored.pop(k - order - 1, None)
        # x0 coefficients c_j of the corrected state minus the predicted one (a_k sum_j (w^C_j - w^P_j) x0_j)
        correction: dict[int, float] = {}
        if corrector == "unic" and last is not None:
            nodes, w_pred = last
            w_corr = interpolation_weights([lam[j] - lam[k - 1] for j in nodes + [k]], lam[k] - lam[k - 1])
            for j, w in zip(nodes + [k], w_corr):
                correction[j] = correction.get(j, 0.0) + a[k] * w
            for j, w in zip(nodes, w_pred):
                correction[j] -= a[k] * w
        use = min(order, k + 1) if math.isfinite(lam[k + 1]) else 1
        nodes = list(range(k, k - use, -1))
        w_pred = interpolation_weights([lam[j] - lam[k] for j in nodes], lam[k + 1] - lam[k])
        last = (nodes, w_pred)
        # x_{k+1} = ratio (x_k + sum_j c_j x0_j) + a_{k+1} sum_j w_j x0_j, then x0_j = (x_j - std_j S^{1/2} eps_j) / a_j
        ratio = std[k + 1] / std[k]
        coeff = {j: ratio * c for j, c in correction.items()}
        for j, w in zip(nodes, w_pred):
            coeff[j] = coeff.get(j, 0.0) + a[k + 1] * w
        u = {j: c / a[j] for j, c in coeff.items()}
        u[k] = u.get(k, 0.0) + ratio
        x_lin = sum(u_j * stored[j][0] for j, u_j in u.items())
        eps_lin = sum(-c * std[j] / a[j] * stored[j][1] for j, c in coeff.items())
        x = run.update(x_lin, eps_lin, 1.0, 1.0, 0.0, k, t)
    return x

"""A lean adaptive Dormand-Prince 5(4) solver in torch with scipy's RK45 step control (docs/math.md §5).

Solves dy/dt = f(t, y) for one flat state vector y from t0 to t1 (either direction) by the Dormand-Prince pair
(Dormand and Prince 1980, the tableau of scipy.integrate.RK45 and torchdiffeq's dopri5): seven stages, the last
evaluated at the step's end (first same as last, FSAL, so an accepted step costs six evaluations), propagating the
fifth-order solution (local extrapolation) with the embedded error estimate

    err = h sum_i E_i k_i,    ||err|| = sqrt(mean_j (err_j / (atol + rtol max(|y_j|, |y_new_j|)))^2),

the root mean square over every entry of the state. The step is accepted when ||err|| < 1 and the next step size
follows scipy's rule: h <- h min(10, 0.9 ||err||^(-1/5)) after an accepted step (at most 1 right after a rejection),
h <- h max(0.2, 0.9 ||err||^(-1/5)) after a rejection. Unlike torchdiffeq, an accepted step may shrink the next one.
The first step is scipy's heuristic (Hairer, Norsett and Wanner, Solving ODEs I, II.4): h0 = 0.01 ||y0|| / ||f0||,
one probe evaluation at t0 + h0, h = min(100 h0, (0.01 / max(||f0||, ||f(t0 + h0) - f0|| / h0))^(1/5)), norms
scaled by atol + rtol |y0|.

f is only evaluated at times inside [t0, t1] (stage times are clamped to it; the last step lands exactly on t1).
The state, stages and scratch space are allocated once per solve; a step is a few fused tensor operations and one
host synchronisation (the accept / reject decision).

Quadratures: when the last `quadrature` entries of y are integrals (nothing, f included, depends on them, as the
log-density of docs/math.md §5), their derivative at the second stage is never used (B_2 = E_2 = 0, and stage states
only feed f through the other entries), so that stage calls f with quadrature=False and f may skip them (they are
set to zero); every result is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["rk45", "Derivative"]

# f(t, y, out, quadrature): writes dy/dt at (t, y) into `out` (same shape and dtype as y); with quadrature=False
# it may leave out the derivative of the quadrature entries (module docstring).
Derivative = Callable[[float, Tensor, Tensor, bool], None]

C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# fifth- minus fourth-order weights over the seven stages (the last is f at the step's end)
E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
ERROR_EXPONENT = -1 / 5  # -1 / (order of the error estimate + 1)


def _rms(v: Tensor) -> float:
    """sqrt(mean(v^2)) (overwrites v)."""
    return float(v.square_().mean().sqrt())


def rk45(
    fun: Derivative, y0: Tensor, t0: float, t1: float, rtol: float, atol: float, quadrature: int = 0
) -> tuple[Tensor, int, int]:
    """(y(t1), evaluations of fun, accepted steps) for the flat state y0 (module docstring).

    Raises FloatingPointError when a step's error estimate is not finite (a non-finite stage), RuntimeError when the
    step size falls below the spacing of floating-point times.
    """
    if y0.dim() != 1 or not y0.is_floating_point():
        raise ValueError(f"y0 must be a flat floating-point tensor, got {tuple(y0.shape)} {y0.dtype}")
    t0, t1 = float(t0), float(t1)
    direction = 1.0 if t1 >= t0 else -1.0
    length = abs(t1 - t0)
    y = y0.clone()
    if length == 0:
        return y, 0, 0
    n = y.numel()
    kw = {"dtype": y.dtype, "device": y.device}
    a = [torch.tensor(row, **kw) for row in A]
    b, e = torch.tensor(B, **kw), torch.tensor(E, **kw)
    k = torch.empty(7, n, **kw)
    y_new, stage, scale, work = (torch.empty_like(y) for _ in range(4))
    lo, hi = min(t0, t1), max(t0, t1)

    def at(t: float) -> float:
        return min(max(t, lo), hi)

    q = slice(n - quadrature, n)
    fun(t0, y, k[0], True)
    nfe = 1
    # initial step (scipy.integrate._ivp.common.select_initial_step)
    torch.abs(y, out=scale).mul_(rtol).add_(atol)
    d0, d1 = _rms(torch.div(y, scale, out=work)), _rms(torch.div(k[0], scale, out=work))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, length)
    torch.add(y, k[0], alpha=direction * h0, out=stage)
    fun(at(t0 + direction * h0), stage, k[1], True)
    nfe += 1
    d2 = _rms(torch.sub(k[1], k[0], out=work).div_(scale)) / h0
    h1 = max(1e-6, h0 * 1e-3) if d1 <= 1e-15 and d2 <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h_abs = min(100 * h0, h1, length)

    t, steps = t0, 0
    while direction * (t1 - t) > 0:
        min_step = 10 * abs(math.nextafter(t, direction * math.inf) - t)
        h_abs = max(h_abs, min_step)
        rejected = False
        while True:
            if h_abs < min_step:
                raise RuntimeError(f"rk45: the step size fell below the spacing of times at t = {t:.6g}")
            t_new = t + direction * h_abs
            if direction * (t_new - t1) > 0:
                t_new = t1
            h = t_new - t
            h_abs = abs(h)
            for i in range(1, 6):
                torch.addmv(y, k[:i].T, a[i], alpha=h, out=stage)
                skip = i == 1 and quadrature > 0
                fun(at(t + C[i] * h), stage, k[i], not skip)
                if skip:
                    k[1, q] = 0
            torch.addmv(y, k[:6].T, b, alpha=h, out=y_new)
            fun(t_new, y_new, k[6], True)
            nfe += 6
            torch.abs(y, out=scale)
            torch.maximum(scale, torch.abs(y_new, out=work), out=scale).mul_(rtol).add_(atol)
            error = _rms(torch.mv(k.T, e, out=work).mul_(h).div_(scale))
            if not math.isfinite(error):
                raise FloatingPointError(f"rk45: non-finite error estimate in the step from t = {t:.6g} to {t_new:.6g}")
            if error < 1:
                factor = MAX_FACTOR if error == 0 else min(MAX_FACTOR, SAFETY * error**ERROR_EXPONENT)
                h_abs *= min(1.0, factor) if rejected else factor
                break
            h_abs *= max(MIN_FACTOR, SAFETY * error**ERROR_EXPONENT)
            rejected = True
        y, y_new = y_new, y
        k[0].copy_(k[6])
        t = t_new
        steps += 1
    return y, nfe, steps

"""Probability-flow ODE sampling with torchdiffeq (docs/math.md §3, 4).

    dx/dt = f(x, t) - 1/2 g(t)^2 Sigma grad log p_t(x) = f(x, t) + g^2 / (2 std) Sigma^{1/2} eps(x, t),

integrated from x_T ~ N(0, c^2 Sigma) at t = T down to t = eps with any torchdiffeq method. Adaptive methods
(the default, dopri5) take rtol / atol; fixed-grid methods take `steps` solver steps on linspace(T, eps, steps + 1).
The model is never evaluated outside [eps, T]: adaptive solves are told to step exactly onto eps (torchdiffeq's
`step_t`), and the initial step-size probe, the only evaluation that could leave the interval, has its time
clamped to it. denoise=True ends with Tweedie's E[x_0 | x_eps] = (x - std Sigma^{1/2} eps) / a (one more evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .common import DEFAULT_EPS, Run, check_eps, probability_flow_drift

__all__ = ["sample_ode", "check_solver", "ClampedTime", "FIXED_GRID_SOLVERS", "ADAPTIVE_SOLVERS"]

# torchdiffeq's method names (the `method` argument of odeint), split by kind. torchdiffeq has no public list of
# them; tests/test_solver_names.py checks these tuples against its registry, so an upgrade that adds, removes or
# reclassifies a method fails that test instead of reaching users.
FIXED_GRID_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE_SOLVERS = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver")


def check_solver(solver: str) -> bool:
    """True for a fixed-grid torchdiffeq method, False for an adaptive one; ValueError for an unknown name."""
    if solver in FIXED_GRID_SOLVERS:
        return True
    if solver in ADAPTIVE_SOLVERS:
        return False
    names = sorted(FIXED_GRID_SOLVERS + ADAPTIVE_SOLVERS)
    raise ValueError(f"solver must be a torchdiffeq method, one of {names}; got {solver!r}")


class ClampedTime:
    """Wraps dynamics(t, state) so that t is clamped to [low, high] and evaluations are counted."""

    def __init__(self, dynamics: Callable, low: float, high: float, on_call: Callable[[], None] | None = None):
        self.dynamics = dynamics
        self.low, self.high = low, high
        self.on_call = on_call
        self.calls = 0

    def __call__(self, t: Tensor, state):
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return self.dynamics(t.clamp(self.low, self.high), state)


def sample_ode(
    run: Run,
    steps: int | None,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = DEFAULT_EPS,
    denoise: bool = True,
) -> Tensor:
    """x_eps (or E[x_0 | x_eps]) by solving the probability-flow ODE from T to eps (module docstring)."""
    from torchdiffeq import odeint  # imported on first use: it imports scipy.integrate, a second of start-up

    sde = run.sde
    eps = check_eps(sde, eps)
    fixed = check_solver(solver)
    if fixed and steps is None:
        raise ValueError(f"solver {solver!r} is a fixed-grid method: give steps (the number of solver steps)")
    if not fixed and steps is not None:
        raise ValueError(f"solver {solver!r} is adaptive (rtol, atol): steps must be None")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    x = run.prior()
    bar = run.progress_bar(f"ode {solver}")

    def dynamics(t: Tensor, x: Tensor) -> Tensor:
        tt = t.to(run.dtype).expand(run.batch)
        run.check(x, f"ode evaluation {run.nfe + 1}", tt)
        return probability_flow_drift(sde, run.eps, x, tt)

    func = ClampedTime(dynamics, eps, sde.T, on_call=bar.update)
    if fixed:
        grid = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64, device=run.device)
        x = odeint(func, x, grid, method=solver)[-1]
    else:
        grid = torch.tensor([sde.T, eps], dtype=torch.float64, device=run.device)
        options = {"step_t": grid[1:]}
        x = odeint(func, x, grid, method=solver, rtol=rtol, atol=atol, options=options)[-1]
    bar.close()
    x = run.check(x, "ode end", eps)
    if denoise:
        tt = run.time(eps)
        if sde.per_coefficient:  # x0 = U^T ((y - s e) / a) per coefficient
            a, s = (v.to(x) for v in sde.spectral_scales(tt.double().cpu()))
            x0 = sde.from_spectral((sde.to_spectral(x) - s * sde.to_spectral(run.eps(x, tt))) / a)
            return run.accept(x0, "denoise", eps)
        x = run.update(x, run.eps(x, tt), *sde.denoise_coefficients(tt), 0.0, "denoise", eps)
    return x

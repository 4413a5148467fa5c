"""Log-likelihood through the probability-flow ODE, and bits per dimension (docs/math.md §5, 5.1).

With the probability-flow drift f~(x, t) = f(x, t) + g^2 / (2 std) Sigma^{1/2} eps(x, t) (docs/math.md §3, 4), integrate
x and its divergence forward from x(eps) = data to t = T:

    log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.

div f~ is exact (the Jacobian's diagonal from D copies of the batch in one model call, small D only) or
Hutchinson's v^T (d f~/dx) v from one vector-Jacobian product, v Rademacher or Gaussian, drawn from `generator`
once per solve. The drift is `kernels.ni_update` (one Sigma^{1/2} per evaluation), or, for a model that predicts
the score itself, f - 1/2 g^2 Sigma s (one Sigma), as sde.reverse(..., probability_flow=True).

Solvers: "rk45" (default; samplers.rk45: Dormand-Prince 5(4) with scipy's RK45 step control, the state x and the
log-density in one flat tensor, error norm the RMS over all its entries; the second stage of each step needs no
divergence, so it is a forward pass without a graph) or any adaptive torchdiffeq method ("dopri5", ...), with the
same RMS norm. The model is never evaluated outside [eps, T] (rk45 clamps its stage times; torchdiffeq is told to
step exactly onto T, and its initial step-size probe is clamped, as in samplers.ode).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

import kernels
from sde_lib import SDE, nats_to_bpd
from sde_lib import dequantize as dequantize_pixels

from .common import ScoreFn, check_eps
from .ode import ADAPTIVE_SOLVERS, ClampedTime
from .rk45 import rk45
from .score_model import ScoreModel, as_score_model
from .spectral import flow_coefficients

__all__ = ["DIVERGENCES", "SOLVERS", "log_likelihood", "bits_per_dim"]

DIVERGENCES = ("exact", "rademacher", "gaussian")
SOLVERS = ("rk45", *ADAPTIVE_SOLVERS)  # ours (samplers.rk45), then torchdiffeq's adaptive methods


def _probe(x: Tensor, divergence: str, generator: torch.Generator | None) -> Tensor | None:
    """The Hutchinson vector v (fixed for the whole solve), or None for the exact divergence."""
    if divergence == "exact":
        return None
    if divergence == "gaussian":
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def _rms_norm(state: tuple[Tensor, ...]) -> Tensor:
    """Root mean square over every entry of the (x, log-density) state: the step-size control error norm."""
    total = sum(v.square().sum() for v in state)
    return (total / sum(v.numel() for v in state)).sqrt()


class _ProbabilityFlow:
    """The probability-flow drift and its divergence (docs/math.md §3-5), split as

        f~(x, t) = f(x, t) + c(t) M g(x, t),

    g the model's eps with M = Sigma^{1/2}, c = c_eps = g^2 / (2 std) (or, for a model that predicts the score at
    no fixed scale, g = s, M = Sigma, c = -g^2 / 2: one Sigma instead of Sigma^{1/2} twice). M is symmetric and
    does not depend on x, and f(x, t) = (d log a / dt) x is linear in x (the transition mean a(t) x_0 of every
    SDE here, docs/math.md §3, 4), so Hutchinson's estimate needs autograd through the model only:

        v^T (d f~ / dx) v = v^T f(v, t) + c (M v)^T (dg/dx) v,

    one vector-Jacobian product of the model with M v, computed once per solve; the drift's value is one fused
    `kernels.ni_update` (eps) or one Sigma (score) outside the graph.
    """

    def __init__(self, sde: SDE, model: ScoreModel, probe: Tensor | None):
        self.sde, self.model, self.probe = sde, model, probe
        self.score = model.prediction == "score" and model.scale is None
        self.m_probe = None
        if probe is not None:
            self.m_probe = sde.cov.mul(probe) if self.score else sde.cov.sqrt_mul(probe)

    def coefficients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(f(x, t), c(t) (B,)): c = g^2 / (2 std), or -g^2 / 2 for a score model (f, g = sde.sde(x, t))."""
        f, g = self.sde.sde(x, t)
        return f, -0.5 * g.square() if self.score else 0.5 * g.square() / self.sde.marginal_std(t)

    def output(self, x: Tensor, t: Tensor) -> Tensor:
        """g(x, t): the model's score or eps."""
        return self.model(x, t) if self.score else self.model.eps(x, t)

    def combine(self, f: Tensor, c: Tensor, g: Tensor) -> Tensor:
        """f + c M g."""
        if self.score:
            return f + c[:, None, None, None] * self.sde.cov.mul(g)
        return kernels.ni_update(f, g, 1.0, c, 0.0, self.sde.cov, None)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f~(x, t), differentiable in x when gradients are recorded."""
        return self.combine(*self.coefficients(x, t), self.output(x, t))

    def drift_and_divergence(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The drift at x and its divergence tr(d drift / dx) per sample (B,), both detached: Hutchinson's
        estimate (class docstring) with the solve's probe, or exact (`_exact_divergence`) without one."""
        if self.probe is None:
            return _exact_divergence(self.drift, x, t)
        v = self.probe
        with torch.no_grad():
            f, c = self.coefficients(x, t)
            div = (v * self.linear(v, t)).flatten(1).sum(1)  # v^T f(v, t) = v^T (df/dx) v
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            g = self.output(xg, t)
            if g.requires_grad:  # else a model that does not depend on x
                (vjp,) = torch.autograd.grad(g, xg, self.probe_weight(c, t))
                div = div + (vjp * v).flatten(1).sum(1)
        with torch.no_grad():
            return self.combine(f, c, g.detach()), div

    def linear(self, v: Tensor, t: Tensor) -> Tensor:
        """f(v, t): the drift's part that is linear in x."""
        return self.sde.sde(v, t)[0]

    def probe_weight(self, c: Tensor, t: Tensor) -> Tensor:
        """w with c (M v)^T (dg/dx) v = w^T (dg/dx) v: c M v."""
        return c[:, None, None, None] * self.m_probe


class _SpectralFlow(_ProbabilityFlow):
    """The same split for the spectral family (docs/math.md §11), per coefficient of its basis U:

        f~(x, t) = U^T (f y) + U^T (C U g),   y = U x,   C = -lambda' s,

    g the model's eps (a score model goes through its eps at the marginal scales); M = U^T diag(C) U is
    symmetric but depends on t, so the probe's weight M v is formed at every evaluation (two transforms)."""

    def __init__(self, sde: SDE, model: ScoreModel, probe: Tensor | None):
        super().__init__(sde, model, None)
        self.probe, self.score = probe, False

    def coefficients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        f, dlam, _, s = flow_coefficients(self.sde, t, x)
        return self.sde.from_spectral(f * self.sde.to_spectral(x)), -dlam * s

    def linear(self, v: Tensor, t: Tensor) -> Tensor:
        return self.sde.from_spectral(flow_coefficients(self.sde, t, v)[0] * self.sde.to_spectral(v))

    def combine(self, f: Tensor, c: Tensor, g: Tensor) -> Tensor:
        return f + self.sde.from_spectral(c * self.sde.to_spectral(g))

    def probe_weight(self, c: Tensor, t: Tensor) -> Tensor:
        return self.sde.from_spectral(c * self.sde.to_spectral(self.probe))


def _check_finite(x: Tensor, t: float) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"likelihood ODE reached a non-finite state at t = {t:.6g}")


def _exact_divergence(drift_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The drift at x and its exact divergence per sample, both detached: the drift of D copies of the batch in
    one call, and one backward pass of sum_d drift_d(copy d), whose gradient in copy d holds row d of the
    Jacobian; its d-th entry summed over d is the trace."""
    B, D = x.shape[0], math.prod(x.shape[1:])
    with torch.enable_grad():
        copies = x.detach().unsqueeze(0).expand(D, *x.shape).reshape(D * B, *x.shape[1:]).requires_grad_(True)
        drift = drift_fn(copies, t.repeat(D)).reshape(D, B, D)
        if not drift.requires_grad:  # a drift that does not depend on x
            return drift[0].detach().reshape(x.shape), torch.zeros(B, dtype=x.dtype, device=x.device)
        index = torch.arange(D, device=x.device)
        (grad,) = torch.autograd.grad(drift[index, :, index].sum(), copies)
        trace = grad.reshape(D, B, D)[index, :, index].sum(0)
    return drift[0].detach().reshape(x.shape), trace


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """TF32 off for matrix products and convolutions inside the block (CUDA turns TF32 convolutions on by default):
    a float32 likelihood at rtol 1e-5 then takes the steps and gives the bits/dim it gives on a CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    divergence: str = "exact",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "rk45",
    eps: float = 1e-5,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    """(log p(x) in nats per sample (B,), x carried to time T, number of score evaluations) (docs/math.md §5).

    `solver`: "rk45" (default, samplers.rk45) or an adaptive torchdiffeq method such as "dopri5" (module
    docstring); rtol, atol: the step control's tolerances. `prior_logp(z)` replaces sde.prior_logp (e.g. the exact
    end-point density). Works in float32 and float64; FloatingPointError when the state becomes non-finite.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"x must be a floating-point (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be 'rk45' or an adaptive torchdiffeq method (rtol, atol), one of {SOLVERS}; "
                         f"got {solver!r}")  # fmt: skip
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    eps = check_eps(sde, eps)
    if sde.cov.is_singular:
        raise ValueError("log_likelihood needs a non-singular covariance (dc='zero' never noises the image mean)")
    flow = (_SpectralFlow if sde.per_coefficient else _ProbabilityFlow)(
        sde, as_score_model(sde, score_fn), _probe(x, divergence, generator)
    )
    solve = _solve_rk45 if solver == "rk45" else _solve_torchdiffeq
    with full_precision_matmul():
        z, delta, calls = solve(flow, x, eps, sde.T, solver, rtol, atol)
    prior = sde.prior_logp(z) if prior_logp is None else prior_logp(z)
    return prior.to(delta) + delta, z, calls


def _solve_rk45(flow: _ProbabilityFlow, x: Tensor, eps: float, T: float, solver: str, rtol: float, atol: float):
    """(x(T), int_eps^T div f~ dt, evaluations) by samplers.rk45 on the flat state (x, log-density increment)."""
    B, n = x.shape[0], x.numel()
    calls = 0

    def derivative(t: float, y: Tensor, out: Tensor, quadrature: bool) -> None:
        nonlocal calls
        calls += 1
        xt = y[:n].view(x.shape)
        _check_finite(xt, t)
        tt = torch.full((B,), t, dtype=x.dtype, device=x.device)
        if quadrature:
            drift, div = flow.drift_and_divergence(xt, tt)
            out[n:].copy_(div)
        else:  # the divergence of this stage is never used (samplers.rk45): no graph, no backward pass
            with torch.no_grad():
                drift = flow.drift(xt, tt)
        out[:n].copy_(drift.reshape(-1))

    y0 = torch.cat([x.detach().reshape(-1), torch.zeros(B, dtype=x.dtype, device=x.device)])
    y, _, _ = rk45(derivative, y0, eps, T, rtol, atol, quadrature=B)
    return y[:n].view(x.shape), y[n:], calls


def _solve_torchdiffeq(flow: _ProbabilityFlow, x: Tensor, eps: float, T: float, solver: str, rtol: float, atol: float):
    """(x(T), int_eps^T div f~ dt, evaluations) by torchdiffeq's `solver` on the state (x, log-density increment)."""
    from torchdiffeq import odeint  # imported on first use, as in samplers.ode

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        xt = state[0]
        _check_finite(xt, float(t))
        return flow.drift_and_divergence(xt, t.to(xt.dtype).expand(xt.shape[0]))

    func = ClampedTime(dynamics, eps, T)
    grid = torch.tensor([eps, T], dtype=torch.float64, device=x.device)
    state = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    options = {"step_t": grid[1:], "norm": _rms_norm}
    xs, integral = odeint(func, state, grid, method=solver, rtol=rtol, atol=atol, options=options)
    return xs[-1], integral[-1], func.calls


def bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    images_uint8: Tensor,
    levels: int = 256,
    dequantize: bool = True,
    dtype: torch.dtype | None = None,
    **likelihood_options,
) -> tuple[Tensor, int]:
    """(bpd per image (B,), score evaluations) of integer images with `levels` grey levels (docs/math.md §5).

    y = (n + u) 2 / levels - 1 (sde_lib.dequantize) with u ~ U[0, 1)^D from likelihood_options["generator"]
    (dequantize=True) or u = 1/2 (the bin centre); bpd = -log p(y) / (D ln 2) + log2(levels / 2)
    (sde_lib.nats_to_bpd). `dtype` is the model-space dtype (default: torch's default dtype).
    """
    if not isinstance(images_uint8, Tensor) or images_uint8.dim() != 4:
        raise ValueError(f"images_uint8 must be a (B, C, H, W) integer tensor, got {type(images_uint8).__name__}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dequantize:
        u = torch.rand(
            images_uint8.shape, generator=likelihood_options.get("generator"), dtype=dtype, device=images_uint8.device
        )
    else:
        u = torch.full(images_uint8.shape, 0.5, dtype=dtype, device=images_uint8.device)
    y = dequantize_pixels(images_uint8, levels, u)
    logp, _, nfe = log_likelihood(sde, score_fn, y, **likelihood_options)
    return nats_to_bpd(logp, math.prod(images_uint8.shape[1:]), levels), nfe

"""Log-likelihood through the probability-flow ODE, and bits per dimension (docs/math.md §5, 5.1).

With the probability-flow drift f~(x, t) = f(x, t) + g^2 / (2 std) Sigma^{1/2} eps(x, t) (docs/math.md §3, 4), integrate
x and its divergence forward from x(eps) = data to t = T with torchdiffeq:

    log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.

div f~ is exact (the Jacobian's diagonal from D copies of the batch in one model call, small D only) or
Hutchinson's v^T (d f~/dx) v from one vector-Jacobian product, v Rademacher or Gaussian, drawn from `generator`
once per solve. The drift is `kernels.ni_update`, which records gradients through its torch reference. The model
is never evaluated outside [eps, T] (as in samplers.ode: the solver is told to step exactly onto T, and the
initial step-size probe is clamped).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from sde_lib import SDE, nats_to_bpd
from sde_lib import dequantize as dequantize_pixels

from .common import ScoreFn, check_eps, probability_flow_drift
from .ode import ClampedTime, check_solver
from .score_model import as_score_model

__all__ = ["DIVERGENCES", "log_likelihood", "bits_per_dim"]

DIVERGENCES = ("exact", "rademacher", "gaussian")


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


def _drift_and_divergence(
    drift_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The drift at x and its divergence tr(d drift / dx) per sample, both detached.

    Hutchinson (probe v): v^T (d drift / dx) v from one vector-Jacobian product. Exact: the drift of D copies of
    the batch in one call, and one backward pass of sum_d drift_d(copy d), whose gradient in copy d holds row d
    of the Jacobian; its d-th entry summed over d is the trace.
    """
    B, D = x.shape[0], math.prod(x.shape[1:])
    with torch.enable_grad():
        if probe is not None:
            xg = x.detach().requires_grad_(True)
            drift = drift_fn(xg, t)
            if not drift.requires_grad:
                return drift.detach(), torch.zeros(B, dtype=x.dtype, device=x.device)
            (vjp,) = torch.autograd.grad(drift, xg, probe)
            return drift.detach(), (vjp * probe).flatten(1).sum(1)
        copies = x.detach().unsqueeze(0).expand(D, *x.shape).reshape(D * B, *x.shape[1:]).requires_grad_(True)
        drift = drift_fn(copies, t.repeat(D)).reshape(D, B, D)
        if not drift.requires_grad:  # a drift that does not depend on x
            return drift[0].reshape(x.shape), torch.zeros(B, dtype=x.dtype, device=x.device)
        index = torch.arange(D, device=x.device)
        (grad,) = torch.autograd.grad(drift[index, :, index].sum(), copies)
        trace = grad.reshape(D, B, D)[index, :, index].sum(0)
    return drift[0].detach().reshape(x.shape), trace


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    divergence: str = "exact",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "dopri5",
    eps: float = 1e-5,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    """(log p(x) in nats per sample (B,), x carried to time T, number of score evaluations) (docs/math.md §5).

    `prior_logp(z)` replaces sde.prior_logp (e.g. the exact end-point density). Works in float32 and float64.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"x must be a floating-point (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if check_solver(solver):
        raise ValueError(f"solver must be an adaptive torchdiffeq method (rtol, atol), got fixed-grid {solver!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    eps = check_eps(sde, eps)
    if sde.cov.is_singular:
        raise ValueError("log_likelihood needs a non-singular covariance (dc='zero' never noises the image mean)")
    model = as_score_model(sde, score_fn)
    probe = _probe(x, divergence, generator)

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        xt = state[0]
        if not bool(torch.isfinite(xt).all()):
            raise FloatingPointError(f"likelihood ODE reached a non-finite state at t = {float(t):.6g}")
        tt = t.to(xt.dtype).expand(xt.shape[0])
        return _drift_and_divergence(lambda y, u: probability_flow_drift(sde, model.eps, y, u), xt, tt, probe)

    func = ClampedTime(dynamics, eps, sde.T)
    grid = torch.tensor([eps, sde.T], dtype=torch.float64, device=x.device)
    state = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    options = {"step_t": grid[1:], "norm": _rms_norm}
    xs, integral = odeint(func, state, grid, method=solver, rtol=rtol, atol=atol, options=options)
    z, delta = xs[-1], integral[-1]
    prior = sde.prior_logp(z) if prior_logp is None else prior_logp(z)
    return prior.to(delta) + delta, z, func.calls


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

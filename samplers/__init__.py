"""Samplers and likelihoods for SDEs with non-isotropic Gaussian noise (docs/math.md §2-5).

    x, nfe = samplers.sample(sde, score_fn, shape, method="pc", steps=None, generator=None, progress=False,
                             device=None, dtype=None, **options)
    logp, z, nfe = samplers.log_likelihood(sde, score_fn, x, divergence="exact", solver="rk45", ...)
    bpd, nfe = samplers.bits_per_dim(sde, score_fn, images_uint8, levels=256, dequantize=True, ...)
    score_fn = samplers.score_fn_from_eps(sde, eps_model)        # or any score_fn(x, t), or a ScoreModel

log_likelihood's default solver "rk45" is samplers.rk45 (Dormand-Prince 5(4) with scipy's RK45 step control);
solver="dopri5" or any adaptive torchdiffeq method solves the same ODE with torchdiffeq.

A trained network reaches the samplers as a `ScoreModel` (samplers.score_model: what it predicts, the noise scale
it was trained at); `training.losses.score_fn_for(net, sde, loss)` builds one. Each sampler reads the model's eps at
its own noise scale, exactly (no conversion where that is the network's own scale).

Methods and their options (defaults in brackets; each module's docstring states its formulas):

* "pc" (samplers.pc): predictor in {euler_maruyama, reverse_diffusion, ancestral, none} [euler_maruyama],
  corrector in {langevin, ald, none} [none], snr [0.16], n_corrector [1], denoise [True], eps [1e-3]; all SDEs.
  The spectral family (blur, heat; docs/math.md §11) takes euler_maruyama or ancestral (the exact per-coefficient
  posterior on any grid) without a corrector (samplers.spectral); "ode" and "dpm2m" take it too, the others not.
* "ode" (samplers.ode): solver = any torchdiffeq method [dopri5], rtol [1e-5], atol [1e-5], eps [1e-3],
  denoise [True]; adaptive solvers take steps=None, fixed-grid ones need steps; all SDEs.
* "ddpm" (samplers.discrete): var in {posterior, beta} [posterior]; SDEs with a discrete DDPM chain (VP, NIVP).
* "ddim" (samplers.discrete): eta [0.0]; SDEs with a discrete DDPM chain.
* "als", "cas" (samplers.smld): eps_step [6.2e-6], n_steps_each (als only) [5], harmonic_mean [False],
  denoise [True], eps [1e-3]; SDEs with NI-SMLD noise levels (VE, NI-VE).
* "dpm2m" (samplers.dpm_solver): the few-step method, per coefficient of the SDE's spectral basis (a step
  h_k = Delta lambda_k each): order in {1, 2} [2], schedule in {signal, logsnr, time} [the SDE's few_step_grid:
  signal; logsnr for blur and heat], warp [1.0],
  eps [1e-3], denoise [True], per_frequency [True], clip_x0 [None] (run.py passes 1: images in [-1, 1]); every
  SDE. steps defaults to 20.
* "unipc" (samplers.unipc): multistep predictor of order in {1, 2, 3} [3] with the UniC corrector in {unic, none}
  [unic] (no extra evaluation), schedule in {signal, logsnr, time} [signal], eps [1e-3], denoise [True]; every SDE.
  steps defaults to 10. Closer to the ODE than dpm2m with exact scores; at 10 steps on a learned model, not always.

`steps` is the number of time steps (noise levels); it is the number of model evaluations except for correctors
(n_corrector more per step), als (n_steps_each per level) and the final denoising evaluation of ode / als;
the returned `nfe` always counts them exactly. Every step is one `kernels.ni_update` whose noise seed is drawn from
`generator`, so a run is reproducible and sample i of a batch does not depend on the batch size. A non-finite x
raises FloatingPointError naming the step and the time.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from sde_lib import SDE, NotApplicableError

from .common import Run, ScoreFn
from .discrete import sample_ddim, sample_ddpm
from .dpm_solver import sample_dpm2m
from .generate import batch_seed, sample_batches
from .likelihood import bits_per_dim, log_likelihood
from .ode import sample_ode
from .pc import sample_pc
from .score_model import ScoreModel, score_fn_from_eps
from .smld import sample_als, sample_cas
from .unipc import sample_unipc

__all__ = [
    "METHODS",
    "sample",
    "log_likelihood",
    "bits_per_dim",
    "score_fn_from_eps",
    "ScoreModel",
    "sample_batches",
    "batch_seed",
]

METHODS = {
    "pc": sample_pc,
    "ode": sample_ode,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "als": sample_als,
    "cas": sample_cas,
    "dpm2m": sample_dpm2m,
    "unipc": sample_unipc,
}


def _options(method: str) -> tuple[str, ...]:
    return tuple(inspect.signature(METHODS[method]).parameters)[2:]


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: tuple[int, int, int, int],
    method: str = "pc",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options,
) -> tuple[Tensor, int]:
    """Draw shape[0] samples of shape[1:] = (C, H, W) by `method`; returns (x, number of score evaluations).

    score_fn(x, t) -> grad log p_t(x) with t a (B,) tensor of continuous times in [eps, T]; dtype None means
    torch's default dtype. See the package docstring for methods, options and conventions.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be (B, C, H, W) with positive ints, got {shape}")
    if sde.cov.shape is not None and shape[1:] != sde.cov.shape:
        raise ValueError(f"shape[1:] = {shape[1:]} does not match the SDE's covariance shape {sde.cov.shape}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be None or an int >= 1, got {steps!r}")
    allowed = _options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method {method!r}; it takes {list(allowed)}")
    run = Run(sde, score_fn, shape, generator, progress, device, dtype)
    try:
        x = METHODS[method](run, steps, **options)
    except NotApplicableError as err:
        raise ValueError(f"method {method!r} does not apply to {sde.name}: {err}") from None
    return x, run.nfe

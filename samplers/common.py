"""What every sampler shares: the eps view of a score model, the update step, seeds, checks and time grids.

Every sampler step in this package is one call of `kernels.ni_update` (MATH.md 2-4):

    x_next = c_x x + Sigma^{1/2} (c_eps eps + c_z z),     z ~ N(0, I) white noise from a per-step seed,

where eps is the white-noise prediction of the model at (x, t). A score model is turned into one by
eps = -std(t) Sigma^{1/2} score (`sde.score_to_eps`); a model built by `score_fn_from_eps` hands its eps over
directly. So Sigma s = -Sigma^{1/2} eps / std: the samplers only ever apply Sigma^{1/2}, through the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

import kernels
from sde_lib import NIVESDE, NIVPSDE, SDE, SubVPSDE

__all__ = [
    "ScoreFn",
    "EpsModel",
    "EpsScoreFn",
    "score_fn_from_eps",
    "eps_function",
    "sde_family",
    "require_family",
    "Run",
    "time_grid",
    "batch_time",
    "probability_flow_drift",
    "check_eps",
    "DEFAULT_EPS",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
EpsModel = Callable[[Tensor, Tensor], Tensor]

DEFAULT_EPS = 1e-3  # the last time of continuous-time samplers (score_sde_pytorch's sampling eps)
SEED_HIGH = 2**31 - 1


class EpsScoreFn:
    """score(x, t) = -Sigma^{-1/2} eps_model(x, t) / std(t) (MATH.md 2, 3), by `kernels.score_scale`.

    Samplers given this object use `eps_model` directly instead of converting the score back to eps.
    """

    def __init__(self, sde: SDE, eps_model: EpsModel):
        if not callable(eps_model):
            raise TypeError(f"eps_model must be callable as eps_model(x, t), got {type(eps_model).__name__}")
        self.sde = sde
        self.eps_model = eps_model

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        t = batch_time(t, x)
        return kernels.score_scale(self.eps_model(x, t), self.sde.marginal_std(t), self.sde.cov)


def score_fn_from_eps(sde: SDE, eps_model: EpsModel) -> EpsScoreFn:
    """The score model of a white-noise predictor: score = -Sigma^{-1/2} eps_model(x, t) / std(t) (MATH.md 2, 3)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")
    return EpsScoreFn(sde, eps_model)


def eps_function(sde: SDE, score_fn: ScoreFn) -> EpsModel:
    """eps(x, t) = -std(t) Sigma^{1/2} score_fn(x, t) (`sde.score_to_eps`), or the eps model itself (MATH.md 2)."""
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    if isinstance(score_fn, EpsScoreFn) and score_fn.sde is sde:
        return score_fn.eps_model
    return lambda x, t: sde.score_to_eps(score_fn(x, t), t)


def sde_family(sde: SDE) -> str:
    """'vp' (NIVPSDE / VPSDE: discretised by NI-DDPM), 'subvp', or 've' (NIVESDE / VESDE: NI-SMLD)."""
    if isinstance(sde, SubVPSDE):
        return "subvp"
    if isinstance(sde, NIVPSDE):
        return "vp"
    if isinstance(sde, NIVESDE):
        return "ve"
    raise TypeError(f"sde must be one of sde_lib's NIVPSDE, VPSDE, SubVPSDE, NIVESDE, VESDE; got {type(sde).__name__}")


def require_family(sde: SDE, method: str, families: tuple[str, ...], reason: str) -> str:
    """The SDE's family, or ValueError naming the method, the SDE and why it does not apply."""
    family = sde_family(sde)
    if family not in families:
        raise ValueError(f"method {method!r} does not apply to {type(sde).__name__}: {reason}")
    return family


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """t as a (B,) tensor of x's dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def time_grid(sde: SDE, steps: int, eps: float) -> Tensor:
    """steps times linspace(T, eps, steps), float64: where the continuous-time samplers evaluate the model."""
    check_eps(sde, eps)
    return torch.linspace(sde.T, eps, steps, dtype=torch.float64)


def check_eps(sde: SDE, eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps (the smallest time) must lie in (0, T = {sde.T}), got {eps!r}")
    return float(eps)


def probability_flow_drift(sde: SDE, eps_fn: EpsModel, x: Tensor, t: Tensor) -> Tensor:
    """dx/dt = f(x, t) - 1/2 g(t)^2 Sigma s = f(x, t) + g^2 / (2 std) Sigma^{1/2} eps(x, t) (MATH.md 3, 4).

    One `kernels.ni_update` with c_x = 1 and no noise (differentiable in x: kernels use their torch reference
    when gradients are recorded).
    """
    drift, g = sde.sde(x, t)
    return kernels.ni_update(drift, eps_fn(x, t), 1.0, g**2 / (2 * sde.marginal_std(t)), 0.0, sde.cov, None)


class Run:
    """One sampling run: the SDE, the eps view of the model (counting evaluations), seeds, progress and checks."""

    def __init__(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        progress: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ):
        self.sde = sde
        self.shape = tuple(shape)
        self.generator = generator
        self.show_progress = bool(progress)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self._eps_fn = eps_function(sde, score_fn)
        self.nfe = 0

    @property
    def batch(self) -> int:
        return self.shape[0]

    def time(self, t: float) -> Tensor:
        """A (B,) time vector of the run's dtype and device."""
        return torch.full((self.batch,), float(t), dtype=self.dtype, device=self.device)

    def eps(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The model's white-noise prediction at (x, t); counts one function evaluation."""
        self.nfe += 1
        return self._eps_fn(x, self.time(t) if not isinstance(t, Tensor) else t)

    def seed(self) -> int:
        """A fresh noise seed from the user's generator: the run's noise is reproducible from it."""
        device = self.generator.device if self.generator is not None else None
        return int(torch.randint(0, SEED_HIGH, (), generator=self.generator, device=device))

    def prior(self) -> Tensor:
        """x_T = c Sigma^{1/2} z ~ N(0, c^2 Sigma) (c = sde.prior_scale), as ni_update(0, 0, 0, 0, c): sample i's
        noise depends on (seed, i) only, and covariances built without a shape work too."""
        zero = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return self.update(zero, zero, 0.0, 0.0, self.sde.prior_scale, "prior", self.sde.T)

    def update(self, x: Tensor, eps: Tensor, c_x, c_eps, c_z, step: int | str, t: float | Tensor) -> Tensor:
        """x_next = c_x x + Sigma^{1/2}(c_eps eps + c_z z) by one `kernels.ni_update`; c_* scalars or (B,) tensors.

        A fresh seed is drawn only for a step with noise (c_z not all zero). Raises FloatingPointError on a
        non-finite result, naming the step and time.
        """
        seed = self.seed() if bool((torch.as_tensor(c_z) != 0).any()) else None
        return self.check(kernels.ni_update(x, eps, c_x, c_eps, c_z, self.sde.cov, seed), step, t)

    @staticmethod
    def check(x: Tensor, step: int | str, t: float | Tensor) -> Tensor:
        """x itself, or FloatingPointError when it holds a NaN or an infinity."""
        if not bool(torch.isfinite(x).all()):
            t = float(t.flatten()[0]) if isinstance(t, Tensor) else float(t)
            raise FloatingPointError(
                f"sampling produced a non-finite value at step {step} (t = {t:.6g}); check the score model "
                "and the step size"
            )
        return x

    def steps(self, items: Iterable, total: int, desc: str) -> Iterator:
        """`items`, with a tqdm bar when the run shows progress."""
        return iter(tqdm(items, total=total, desc=desc, disable=not self.show_progress, leave=False))

    def progress_bar(self, desc: str) -> tqdm:
        """An open-ended tqdm bar (advance it with .update(), end it with .close()); inert without progress."""
        return tqdm(desc=desc, disable=not self.show_progress, leave=False)

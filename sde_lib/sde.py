"""SDEs with stationary Gaussian noise: dx = f(x, t) dt + g(t) Sigma^{1/2} dw (MATH.md 3, 4).

The interface is score_sde_pytorch's, generalised to a noise covariance `cov` (sde_lib.covariance):
`diffusion` is the scalar g(t) per sample and the noise it multiplies is always Sigma^{1/2} z. The
isotropic SDEs are the same classes with `IdentityCovariance`; nothing here asks which one it has.

Shapes: x is (B, C, H, W); t is (B,) continuous time in [0, T] (a scalar is broadcast to (B,)).
Every method keeps x's dtype and device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from .covariance import Covariance, IdentityCovariance
from .schedules import ddpm_schedule, geometric_sigmas

__all__ = ["SDE", "ReverseSDE", "NIVPSDE", "VPSDE", "SubVPSDE", "NIVESDE", "VESDE", "ScoreFn"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _bc(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to scale images per sample."""
    return v[:, None, None, None]


def _batch_t(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    return t


class SDE(ABC):
    """Forward SDE dx = f(x, t) dt + g(t) Sigma^{1/2} dw, t in [0, T]; x_t | x_0 ~ N(a(t) x_0, std(t)^2 Sigma)."""

    def __init__(self, N: int, cov: Covariance):
        if int(N) < 1:
            raise ValueError(f"N (number of discretisation steps) must be >= 1, got {N}")
        if not isinstance(cov, Covariance):
            raise TypeError(f"cov must be a sde_lib Covariance, got {type(cov).__name__}")
        self.N = int(N)
        self.cov = cov

    @property
    def T(self) -> float:
        return 1.0

    @property
    def prior_scale(self) -> float:
        """c such that the prior is N(0, c^2 Sigma)."""
        return 1.0

    @abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(drift f(x, t) of shape x.shape, diffusion g(t) of shape (B,))."""

    @abstractmethod
    def mean_coeff(self, t: Tensor) -> Tensor:
        """a(t): E[x_t | x_0] = a(t) x_0."""

    @abstractmethod
    def marginal_std(self, t: Tensor) -> Tensor:
        """std(t): Cov[x_t | x_0] = std(t)^2 Sigma."""

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of x_t | x_0 = x ~ N(mean, std^2 Sigma); std has shape (B,)."""
        t = _batch_t(t, x)
        return _bc(self.mean_coeff(t)) * x, self.marginal_std(t)

    def prior_sampling(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device=None, dtype=None
    ) -> Tensor:
        """z ~ N(0, c^2 Sigma) of the given (B, C, H, W) shape."""
        if device is None and generator is not None:
            device = generator.device
        eps = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return self.prior_scale * self.cov.sqrt_mul(eps)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, c^2 Sigma) per sample = -D/2 log(2 pi c^2) - 1/2 log det Sigma - z^T Sigma^-1 z / (2 c^2)."""
        D = math.prod(z.shape[1:])
        c2 = self.prior_scale**2
        const = -0.5 * D * math.log(2 * math.pi * c2) - 0.5 * self.cov.logdet().item()
        return const - 0.5 * self.cov.quad_inv(z) / c2

    def discrete_index(self, t: Tensor) -> Tensor:
        """Step index i = (t (N - 1) / T).long() of continuous time t, as score_sde_pytorch."""
        return (t * (self.N - 1) / self.T).long()

    def discrete_time(self, i: Tensor | int) -> Tensor:
        """Continuous time t_i = (i + 1) T / N of discrete level i in {0..N-1} (float64).

        The one rule that discrete training (NI-DDPM, NCSN levels) and discrete sampling share: level i is DDPM's
        timestep i + 1 scaled to (0, T], and discrete_index(t_i) = i exactly, in float32 as in float64.
        """
        return (torch.as_tensor(i, dtype=torch.float64) + 1) * self.T / self.N

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """One step x_{i+1} = x_i + f + G Sigma^{1/2} z; Euler-Maruyama by default: f = f(x, t) dt, G = g sqrt(dt)."""
        t = _batch_t(t, x)
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t) (MATH.md 3)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def score_to_eps(self, score: Tensor, t: Tensor) -> Tensor:
        """eps = -std(t) Sigma^{1/2} score: the white-noise prediction that matches a score (MATH.md 2)."""
        return -_bc(self.marginal_std(_batch_t(t, score))) * self.cov.sqrt_mul(score)

    def eps_to_score(self, eps: Tensor, t: Tensor) -> Tensor:
        """score = -Sigma^{-1/2} eps / std(t) (MATH.md 2, 3)."""
        return -self.cov.inv_sqrt_mul(eps) / _bc(self.marginal_std(_batch_t(t, eps)))

    def denoise(self, x: Tensor, score: Tensor, t: Tensor) -> Tensor:
        """Tweedie: E[x_0 | x_t] = (x_t + std(t)^2 Sigma score) / a(t) (MATH.md 2, 4)."""
        t = _batch_t(t, x)
        return (x + _bc(self.marginal_std(t) ** 2) * self.cov.mul(score)) / _bc(self.mean_coeff(t))


class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 Sigma s] dt + g Sigma^{1/2} dw_bar, integrated from T down to 0.

    With probability_flow=True it is the ODE dx = [f - g^2 Sigma s / 2] dt with zero diffusion (MATH.md 3).
    `sde` and `discretize` return (drift, diffusion) with score_sde_pytorch's sign convention.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def cov(self) -> Covariance:
        return self.forward.cov

    def _reverse(self, x: Tensor, t: Tensor, f: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - _bc(G**2 * weight) * self.cov.mul(self.score_fn(x, t))
        return rev_f, torch.zeros_like(G) if self.probability_flow else G

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _batch_t(t, x)
        return self._reverse(x, t, *self.forward.sde(x, t))

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _batch_t(t, x)
        return self._reverse(x, t, *self.forward.discretize(x, t))


class NIVPSDE(SDE):
    """Non-isotropic variance-preserving SDE (MATH.md 3):

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) Sigma^{1/2} dw,   beta(t) = beta_min + t (beta_max - beta_min),
        x_t | x_0 ~ N(a(t) x_0, (1 - a(t)^2) Sigma),  a(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min).

    Its discretisation is NI-DDPM (MATH.md 2) with the schedule `self.schedule` (sde_lib.ddpm_schedule).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, cov: Covariance | None = None):
        if cov is None:
            raise TypeError(
                f"{type(self).__name__} needs cov=..., e.g. GFFCovariance((C, H, W)) (VPSDE is the isotropic one)"
            )
        super().__init__(N, cov)
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        self.schedule = ddpm_schedule(self.beta_0, self.beta_1, self.N)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta_t = self.beta(_batch_t(t, x))
        return -0.5 * _bc(beta_t) * x, torch.sqrt(beta_t)

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_mean_coeff(t))

    def marginal_std(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self._log_mean_coeff(t)))

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """DDPM step: f = (sqrt(alpha_i) - 1) x, G = sqrt(beta_i), i = discrete_index(t) (MATH.md 2)."""
        i = self.discrete_index(_batch_t(t, x)).cpu()
        beta = self.schedule.betas[i].to(x)
        return _bc(torch.sqrt(1.0 - beta) - 1.0) * x, torch.sqrt(beta)


class VPSDE(NIVPSDE):
    """Isotropic VP SDE (DDPM): NIVPSDE with Sigma = I."""

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, shape: tuple[int, int, int] | None = None
    ):
        super().__init__(beta_min, beta_max, N, cov=IdentityCovariance(shape))


class SubVPSDE(NIVPSDE):
    """sub-VP SDE: dx = -1/2 beta x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) Sigma^{1/2} dw.

    x_t | x_0 ~ N(a(t) x_0, (1 - a(t)^2)^2 Sigma). Isotropic unless `cov` is given. Discretised by Euler-Maruyama.
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        N: int = 1000,
        shape: tuple[int, int, int] | None = None,
        cov: Covariance | None = None,
    ):
        super().__init__(beta_min, beta_max, N, cov=IdentityCovariance(shape) if cov is None else cov)

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _batch_t(t, x)
        beta_t = self.beta(t)
        discount = -torch.expm1(4.0 * self._log_mean_coeff(t))  # 1 - exp(-2 beta_0 t - (beta_1 - beta_0) t^2)
        return -0.5 * _bc(beta_t) * x, torch.sqrt(beta_t * discount)

    def marginal_std(self, t: Tensor) -> Tensor:
        return -torch.expm1(2.0 * self._log_mean_coeff(t))

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return SDE.discretize(self, x, t)


class NIVESDE(SDE):
    """Non-isotropic variance-exploding SDE (MATH.md 4):

    dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) Sigma^{1/2} dw,  sigma(t) = sigma_min (sigma_max/sigma_min)^t,
    x_t | x_0 ~ N(x_0, sigma(t)^2 Sigma) (score_sde_pytorch's approximation; exactly sigma(t)^2 - sigma(0)^2),
    prior N(0, sigma_max^2 Sigma). Its discretisation is NI-SMLD with `self.discrete_sigmas`.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000, cov: Covariance | None = None):
        if cov is None:
            raise TypeError(
                f"{type(self).__name__} needs cov=..., e.g. GFFCovariance((C, H, W)) (VESDE is the isotropic one)"
            )
        super().__init__(N, cov)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.discrete_sigmas = geometric_sigmas(self.sigma_min, self.sigma_max, self.N)

    @property
    def prior_scale(self) -> float:
        return self.sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma(_batch_t(t, x))
        return torch.zeros_like(x), sigma * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def marginal_std(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """SMLD step: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) (sigma_{-1} = 0), i = discrete_index(t) (MATH.md 4)."""
        i = self.discrete_index(_batch_t(t, x)).cpu()
        sigma = self.discrete_sigmas[i]
        adjacent = torch.where(i == 0, torch.zeros_like(sigma), self.discrete_sigmas[(i - 1).clamp_min(0)])
        return torch.zeros_like(x), torch.sqrt(sigma**2 - adjacent**2).to(x)


class VESDE(NIVESDE):
    """Isotropic VE SDE (SMLD / NCSN): NIVESDE with Sigma = I."""

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000, shape: tuple[int, int, int] | None = None
    ):
        super().__init__(sigma_min, sigma_max, N, cov=IdentityCovariance(shape))

"""SDEs with stationary Gaussian noise: dx = f(x, t) dt + g(t) Sigma^{1/2} dw (docs/math.md §3, 4).

The interface is score_sde_pytorch's, generalised to a noise covariance `cov` (sde_lib.covariance):
`diffusion` is the scalar g(t) per sample and the noise it multiplies is always Sigma^{1/2} z. The
isotropic SDEs are the same classes with `IdentityCovariance`; nothing here asks which one it has.

Shapes: x is (B, C, H, W); t is (B,) continuous time in [0, T] (a scalar is broadcast to (B,)).
Every method keeps x's dtype and device.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .covariance import Covariance, IdentityCovariance
from .prediction import tweedie_coefficients
from .schedules import ddpm_schedule, geometric_sigmas

if TYPE_CHECKING:
    from .reverse import ReverseSDE

__all__ = ["SDE", "NIVPSDE", "VPSDE", "SubVPSDE", "NIVESDE", "VESDE", "ScoreFn", "NotApplicableError"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class NotApplicableError(ValueError):
    """An SDE has no such structure (e.g. no discrete DDPM chain): the method asking for it does not apply."""


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
        if cov is None:
            raise TypeError(
                f"{type(self).__name__} needs cov=..., e.g. GFFCovariance((C, H, W)); the isotropic SDEs "
                "(VPSDE, VESDE) need none"
            )
        if not isinstance(cov, Covariance):
            raise TypeError(f"cov must be a sde_lib Covariance, got {type(cov).__name__}")
        self.N = int(N)
        self.cov = cov

    @property
    def T(self) -> float:
        return 1.0

    @property
    def few_step_grid(self) -> str:
        """The time grid of the few-step solvers unless told (samplers.dpm_solver.SCHEDULES): "signal"
        (docs/math.md §3.1); the spectral family's is "logsnr" (§11)."""
        return "signal"

    @property
    def per_coefficient(self) -> bool:
        """False: x_t = a(t) x_0 + std(t) Sigma^{1/2} eps with scalar a, std (`marginal`). True for the spectral
        family (sde_lib.spectral), whose `marginal` gives per-coefficient (a, s) in the spectral basis."""
        return False

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

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a(t), std(t)): the signal and noise scales of x_t = a x_0 + std Sigma^{1/2} eps, each (B,)."""
        return self.mean_coeff(t), self.marginal_std(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log a(t) - log std(t), half the log signal-to-noise ratio, float64 (docs/math.md §3, 4)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.log(self.mean_coeff(t)) - torch.log(self.marginal_std(t))

    def denoise_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_x, c_eps): Tweedie's E[x_0 | x_t] = c_x x_t + c_eps Sigma^{1/2} eps, eps at std(t)
        (docs/math.md §2, 4)."""
        return tweedie_coefficients(*self.marginal(t))

    def spectral_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, s) per coefficient of `to_spectral`: a = a(t), s = std(t) sqrt(lambda_k), broadcastable to x."""
        a, std = self.marginal(t)
        lam = self.cov.basis_eigenvalues(std.dtype, std.device)
        return _bc(a), _bc(std) * lam.sqrt()

    def log_spectral_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(log a, log s) per coefficient, float64, differentiable in t (docs/math.md §11)."""
        a, s = self.spectral_scales(torch.as_tensor(t, dtype=torch.float64))
        return a.log(), s.log()

    def spectral_rates(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(f_k, lambda_k') = (d log a_k / dt, d lambda_k / dt) per coefficient, float64, by forward-mode
        differentiation of `log_spectral_scales` (docs/math.md §11): the forward SDE is dy_k = f_k y_k dt + g_k dw_k
        with g_k^2 = -2 lambda_k' s_k^2."""
        t = torch.as_tensor(t, dtype=torch.float64)
        t = t.reshape(1) if t.dim() == 0 else t.clone()  # an expanded t has one memory location for all entries
        with warnings.catch_warnings():  # torch's forward-mode decompositions load through torch.jit.script once
            warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
            _, (d_log_a, d_log_s) = torch.func.jvp(self.log_spectral_scales, (t,), (torch.ones_like(t),))
        return d_log_a, d_log_a - d_log_s

    def to_spectral(self, x: Tensor) -> Tensor:
        """x in the orthonormal basis in which the forward process is diagonal (the covariance's eigenbasis)."""
        return self.cov.to_basis(x)

    def from_spectral(self, y: Tensor) -> Tensor:
        """The inverse of `to_spectral`."""
        return self.cov.from_basis(y)

    # ---- what only some SDEs have: each raises NotApplicableError unless the SDE defines it ----------------
    def discrete_alphas_cumprod(self) -> Tensor:
        """abar_i, i = 0..N-1, of the NI-DDPM chain this SDE discretises to (NI-DDPM / NI-DDIM, loss 'ddpm')."""
        raise NotApplicableError(f"{self.name} has no discrete DDPM chain (that needs a VP-family SDE: NIVPSDE/VPSDE)")

    def discrete_marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(abar_i), sqrt(1 - abar_i)) at level i = discrete_index(t): the NI-DDPM chain's scales
        (docs/math.md §2)."""
        abar = self.discrete_alphas_cumprod()
        return self._level(abar.sqrt(), t), self._level((1.0 - abar).sqrt(), t)

    def smld_sigmas(self) -> Tensor:
        """The NI-SMLD noise levels sigma_0 < .. < sigma_{N-1} (annealed Langevin, CAS, loss 'ncsn';
        docs/math.md §4)."""
        raise NotApplicableError(f"{self.name} has no NI-SMLD noise levels (that needs a VE-family SDE: NIVESDE/VESDE)")

    def ancestral_coefficients(self, t: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_x, c_eps, c_z) of score_sde_pytorch's ancestral step at level discrete_index(t), eps at scale std."""
        raise NotApplicableError(f"{self.name} has no ancestral discretisation")

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """alpha of the Langevin corrector's step size 2 alpha (snr ...)^2 (docs/math.md §4): 1 unless the SDE says."""
        return torch.ones_like(t)

    @property
    def name(self) -> str:
        return type(self).__name__

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
        *,
        noise: Tensor | None = None,
    ) -> Tensor:
        """z = c Sigma^{1/2} w ~ N(0, c^2 Sigma) of the given (B, C, H, W) shape; w ~ N(0, I) drawn from
        `generator`, or the given white `noise` (the samplers pass counter-based noise, see kernels.noise)."""
        if noise is None:
            if device is None and generator is not None:
                device = generator.device
            noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return self.prior_scale * self.cov.sqrt_mul(noise)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, c^2 Sigma) per sample = -D/2 log(2 pi c^2) - 1/2 log det Sigma - z^T Sigma^-1 z / (2 c^2)."""
        D = math.prod(z.shape[1:])
        c2 = self.prior_scale**2
        const = -0.5 * D * math.log(2 * math.pi * c2) - 0.5 * self.cov.logdet().item()
        return const - 0.5 * self.cov.quad_inv(z) / c2

    def discrete_index(self, t: Tensor) -> Tensor:
        """Step index i = (t (N - 1) / T).long() of continuous time t, as score_sde_pytorch."""
        return (t * (self.N - 1) / self.T).long()

    def _level(self, values: Tensor, t: Tensor) -> Tensor:
        """values[discrete_index(t)] (values per discrete level, float64) in t's dtype and device, looked up on t's
        device (no host synchronisation)."""
        return values.to(device=t.device, dtype=t.dtype)[self.discrete_index(t.detach())]

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

    def reverse(self, score_fn: ScoreFn | None, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t) (docs/math.md §3)."""
        from .reverse import ReverseSDE

        return ReverseSDE(self, score_fn, probability_flow)


class NIVPSDE(SDE):
    """Non-isotropic variance-preserving SDE (docs/math.md §3):

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) Sigma^{1/2} dw,   beta(t) = beta_min + t (beta_max - beta_min),
        x_t | x_0 ~ N(a(t) x_0, (1 - a(t)^2) Sigma),  a(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min).

    Its discretisation is NI-DDPM (docs/math.md §2) with the schedule `self.schedule` (sde_lib.ddpm_schedule).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, cov: Covariance | None = None):
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
        """DDPM step: f = (sqrt(alpha_i) - 1) x, G = sqrt(beta_i), i = discrete_index(t) (docs/math.md §2)."""
        beta = self._level(self.schedule.betas, _batch_t(t, x))
        return _bc(torch.sqrt(1.0 - beta) - 1.0) * x, torch.sqrt(beta)

    def discrete_alphas_cumprod(self) -> Tensor:
        return self.schedule.alphas_cumprod

    def ancestral_coefficients(self, t: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x <- (x + beta_i Sigma s) / sqrt(1 - beta_i) + sqrt(beta_i) Sigma^{1/2} z, Sigma s = -Sigma^{1/2} eps / std
        (score_sde_pytorch's ancestral VP step)."""
        beta = self._level(self.schedule.betas, t).to(std)
        return 1 / torch.sqrt(1 - beta), -beta / (std * torch.sqrt(1 - beta)), torch.sqrt(beta)

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """alpha_i = 1 - beta_i at level discrete_index(t), as score_sde_pytorch's VP corrector."""
        return self._level(self.schedule.alphas, t)


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

    def discrete_alphas_cumprod(self) -> Tensor:
        return SDE.discrete_alphas_cumprod(self)

    def ancestral_coefficients(self, t: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return SDE.ancestral_coefficients(self, t, std)


class NIVESDE(SDE):
    """Non-isotropic variance-exploding SDE (docs/math.md §4):

    dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) Sigma^{1/2} dw,  sigma(t) = sigma_min (sigma_max/sigma_min)^t,
    x_t | x_0 ~ N(x_0, sigma(t)^2 Sigma) (score_sde_pytorch's approximation; exactly sigma(t)^2 - sigma(0)^2),
    prior N(0, sigma_max^2 Sigma). Its discretisation is NI-SMLD with `self.discrete_sigmas`.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000, cov: Covariance | None = None):
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

    def _adjacent_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(sigma_i, sigma_{i-1}) at i = discrete_index(t), sigma_{-1} = 0, in t's dtype and device."""
        below = torch.cat([self.discrete_sigmas.new_zeros(1), self.discrete_sigmas[:-1]])
        return self._level(self.discrete_sigmas, t), self._level(below, t)

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """SMLD step: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) (sigma_{-1} = 0), i = discrete_index(t)
        (docs/math.md §4)."""
        sigma, below = self._adjacent_sigmas(_batch_t(t, x))
        return torch.zeros_like(x), torch.sqrt(sigma**2 - below**2)

    def smld_sigmas(self) -> Tensor:
        return self.discrete_sigmas

    def ancestral_coefficients(self, t: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x <- x + (sigma_i^2 - sigma_{i-1}^2) Sigma s + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2)
        Sigma^{1/2} z, with Sigma s = -Sigma^{1/2} eps / std."""
        sigma, below = (v.to(std) for v in self._adjacent_sigmas(t))
        gap = sigma**2 - below**2
        return torch.ones_like(std), -gap / std, torch.sqrt(below**2 * gap / sigma**2)


class VESDE(NIVESDE):
    """Isotropic VE SDE (SMLD / NCSN): NIVESDE with Sigma = I."""

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000, shape: tuple[int, int, int] | None = None
    ):
        super().__init__(sigma_min, sigma_max, N, cov=IdentityCovariance(shape))

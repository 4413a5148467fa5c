"""The spectral family: per-coefficient signal and noise schedules in an orthonormal basis (docs/math.md §11).

    x_t = A(t) x_0 + B(t) eps,   A(t) = U^T diag(a(t)) U,   B(t) = U^T diag(s(t)) U,   eps ~ N(0, I),

U an orthonormal real map of (C, H, W) images (`to_spectral`). Per coefficient k, with lambda_k = log(a_k / s_k)
(half the log-SNR), the forward SDE is dy_k = f_k y_k dt + g_k dw_k with f_k = d log a_k / dt and
g_k^2 = d s_k^2 / dt - 2 f_k s_k^2 = -2 (d lambda_k / dt) s_k^2, so every lambda_k must decrease in t and every
s_k must be positive: both are checked on a float64 time grid when an SDE is built.

Members: every SDE of sde_lib answers `spectral_scales` (VP: a = alpha(t), s = sigma(t); NIVP: s = sigma(t)
sqrt(Sigma_k) in the covariance's Hartley basis), and the two below add a signal that decays per frequency, in the
orthonormal DCT-II basis (reflecting boundaries), with white noise:

    "blur"  (Hoogeboom & Salimans 2023)  a_k = alpha(t) d_k(t), d_k = (1 - d_min) e^{-Lambda_k tau(t)} + d_min,
            tau(t) = sigma_B,max^2 sin^4(pi t / 2) / 2, s = sigma(t); alpha, sigma of the VP SDE (linear beta).
    "heat"  (Rissanen et al. 2023, noise on every coefficient)  a_k = max(e^{-Lambda_k tau(t)}, d_min),
            tau(t) = (sigma_B(t)^2 - sigma_B(0)^2) / 2, sigma_B log-spaced from 0.5 to sigma_B,max, s = 0.01 * 5000^t.

Lambda_k = pi^2 (u^2 / H^2 + v^2 / W^2) for DCT frequency (u, v); sigma_B,max = 20 H / 32; d_min = 1e-3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .covariance import IdentityCovariance, _check_shape
from .sde import NIVPSDE, SDE, NotApplicableError

__all__ = ["DCTBasis", "dct_matrix", "SpectralSDE", "BlurSDE", "HeatSDE", "D_MIN", "MONOTONE_GRID"]

D_MIN = 1e-3  # the smallest signal scale of a frequency (blur, heat)
MONOTONE_GRID = 4001  # float64 time points on which lambda_k's decrease is checked


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix M[u, i] = sqrt(c_u / n) cos(pi (2 i + 1) u / (2 n)), c_0 = 1, c_u = 2."""
    u = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype)


class DCTBasis:
    """The orthonormal 2-D DCT-II per channel: y = M_H x M_W^T, x = M_H^T y M_W (reflecting boundaries)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = _check_shape(shape)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _matrices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.dtype, x.device)
        if key not in self._cache:
            _, H, W = self.shape
            self._cache[key] = (dct_matrix(H).to(x.device, x.dtype), dct_matrix(W).to(x.device, x.dtype))
        return self._cache[key]

    def to_basis(self, x: Tensor) -> Tensor:
        mh, mw = self._matrices(x)
        return mh @ x @ mw.T

    def from_basis(self, y: Tensor) -> Tensor:
        mh, mw = self._matrices(y)
        return mh.T @ y @ mw

    def frequencies(self) -> Tensor:
        """Lambda_k = pi^2 (u^2 / H^2 + v^2 / W^2), shape (H, W), float64: e^{-Lambda_k tau} is the heat kernel of
        time tau (a Gaussian blur of variance 2 tau pixels^2) on coefficient (u, v)."""
        _, H, W = self.shape
        u = torch.arange(H, dtype=torch.float64)[:, None] / H
        v = torch.arange(W, dtype=torch.float64)[None, :] / W
        return math.pi**2 * (u**2 + v**2)


class SpectralSDE(SDE):
    """x_t = A(t) x_0 + B(t) eps, diagonal in `basis` (module docstring); subclasses give `log_scales`.

    There is no scalar signal scale: `mean_coeff`, `marginal_std` and the scalar `sde` raise NotApplicableError,
    so only the samplers written per coefficient apply. `log_snr` is the mean lambda over the coefficients, the
    clock of the samplers' time grids. The prior is N(0, diag(s(T)^2)) in the basis.
    """

    def __init__(self, basis, N: int, shape: tuple[int, int, int]):
        super().__init__(N, IdentityCovariance(shape))
        self.basis = basis

    def log_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(log a, log s) per coefficient, float64, broadcastable to (B, C, H, W), for float64 times t (B,)."""
        raise NotImplementedError

    def _times(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return t.reshape(1) if t.dim() == 0 else t.to(torch.float64)

    def spectral_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        dtype = t.dtype if isinstance(t, Tensor) and t.is_floating_point() else torch.float64
        device = t.device if isinstance(t, Tensor) else None
        log_a, log_s = self.log_scales(self._times(t).cpu())
        shape = (-1, *self.cov.shape)
        return (log_a.exp().expand(shape).to(device, dtype), log_s.exp().expand(shape).to(device, dtype))

    def log_spectral_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_a, log_s = self.log_scales(self._times(t))
        return log_a.expand(-1, *self.cov.shape), log_s.expand(-1, *self.cov.shape)

    def log_snr(self, t: Tensor) -> Tensor:
        """The mean of lambda_k = log a_k - log s_k over the coefficients, (B,) float64."""
        log_a, log_s = self.log_spectral_scales(t)
        return (log_a - log_s).flatten(1).mean(1)

    def to_spectral(self, x: Tensor) -> Tensor:
        return self.basis.to_basis(x)

    def from_spectral(self, y: Tensor) -> Tensor:
        return self.basis.from_basis(y)

    def _no_scalar(self, *_args, **_kwargs):
        raise NotApplicableError(
            f"{self.name} has per-coefficient scales, not one signal scale a(t) and noise std(t): it needs a sampler "
            "written per coefficient (spectral_scales)"
        )

    mean_coeff = marginal_std = sde = _no_scalar

    @property
    def per_coefficient(self) -> bool:
        return True

    @property
    def few_step_grid(self) -> str:
        """ "logsnr": the "signal" grid's first step keeps its size whatever the step count, which the spread
        lambda_k of this family feel (digits, heat, dpm2m at 10 steps: FD 814 on "signal", 43 on "logsnr")."""
        return "logsnr"

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, s) per coefficient of the spectral basis, each (B, C, H, W): x_t = U^T (a U x_0 + s U eps)."""
        return self.spectral_scales(t)

    def perturb(self, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """x_t = U^T (a U x_0 + s U eps) for per-coefficient scales (a, s) of `marginal`."""
        return self.from_spectral(a * self.to_spectral(x0) + s * self.to_spectral(eps))

    def prior_spectral_std(self) -> Tensor:
        return self.spectral_scales(torch.tensor([self.T], dtype=torch.float64))[1]

    def prior_sampling(self, shape, generator=None, device=None, dtype=None, *, noise: Tensor | None = None) -> Tensor:
        """z = U^T (s(T) U w) ~ N(0, B(T)^2), w ~ N(0, I) drawn from `generator`, or the given white `noise`."""
        if noise is None:
            if device is None and generator is not None:
                device = generator.device
            noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        std = self.prior_spectral_std().to(noise.device, noise.dtype)
        return self.from_spectral(std * self.to_spectral(noise))

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, B(T)^2) per sample: sum_k -1/2 log(2 pi s_k^2) - y_k^2 / (2 s_k^2), y = U z."""
        std = self.prior_spectral_std().to(z.device, z.dtype)
        y = self.to_spectral(z)
        return (-0.5 * math.log(2 * math.pi) - std.log() - 0.5 * (y / std).square()).flatten(1).sum(1)

    def check_monotone(self) -> None:
        """Refuse a schedule whose lambda_k increases anywhere on a float64 grid of (0, T], or whose s_k is not
        positive and finite (docs/math.md §11): g_k^2 = -2 lambda_k' s_k^2 would be negative."""
        t = torch.linspace(0, self.T, MONOTONE_GRID, dtype=torch.float64)[1:]
        log_a, log_s = self.log_spectral_scales(t)
        if not (torch.isfinite(log_s).all() and torch.isfinite(log_a).all()):
            raise ValueError(f"{self.name}: every a_k(t) and s_k(t) must be positive and finite on (0, T]")
        lam = log_a - log_s
        rises = (lam[1:] - lam[:-1] > 1e-12 * (1 + lam.abs().max())).flatten(1)
        if rises.any():
            step = int(rises.any(1).nonzero()[0])
            k = int(rises[step].nonzero()[0])
            raise ValueError(f"{self.name}: lambda_k = log(a_k / s_k) must decrease in t, but coefficient "
                             f"{tuple(int(i) for i in torch.unravel_index(torch.tensor(k), lam.shape[1:]))} rises "
                             f"at t = {float(t[step]):.6g}; the diffusion g_k^2 = -2 lambda_k' s_k^2 would be "
                             "negative")  # fmt: skip


class _DCTSchedule(SpectralSDE):
    """What blur and heat share: the DCT-II basis with white noise, Lambda_k, sigma_B,max (default 20 H / 32) and
    d_min (docs/math.md §11.1)."""

    def __init__(self, shape: tuple[int, int, int], N: int, sigma_blur_max: float | None, d_min: float):
        basis = DCTBasis(shape)
        super().__init__(basis, N, basis.shape)
        self.sigma_blur_max = 20.0 * basis.shape[1] / 32 if sigma_blur_max is None else float(sigma_blur_max)
        if not 0 < d_min < 1:
            raise ValueError(f"d_min must lie in (0, 1), got {d_min}")
        self.d_min = float(d_min)
        self._freq = basis.frequencies()


class BlurSDE(_DCTSchedule):
    """Blurring diffusion (Hoogeboom & Salimans 2023; docs/math.md §11.2) on the VP SDE's alpha, sigma."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        N: int = 1000,
        sigma_blur_max: float | None = None,
        d_min: float = D_MIN,
    ):
        super().__init__(shape, N, sigma_blur_max, d_min)
        self.vp = NIVPSDE(beta_min, beta_max, N, cov=self.cov)
        self.check_monotone()

    def log_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha = self.vp._log_mean_coeff(t)
        log_sigma = 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))
        tau = (self.sigma_blur_max**2 / 2) * torch.sin(math.pi * t / 2) ** 4
        decay = -self._freq.to(t.device) * tau[:, None, None, None]  # (B, 1, H, W)
        log_d = torch.logaddexp(math.log1p(-self.d_min) + decay, torch.full_like(decay, math.log(self.d_min)))
        return log_alpha[:, None, None, None] + log_d, log_sigma[:, None, None, None]


class HeatSDE(_DCTSchedule):
    """Inverse heat dissipation (Rissanen et al. 2023; docs/math.md §11.3) with noise on every coefficient."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        N: int = 1000,
        sigma_blur_min: float = 0.5,
        sigma_blur_max: float | None = None,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        d_min: float = D_MIN,
    ):
        super().__init__(shape, N, sigma_blur_max, d_min)
        self.sigma_blur_min = float(sigma_blur_min)
        if not 0 < self.sigma_blur_min < self.sigma_blur_max:
            raise ValueError(f"need 0 < sigma_blur_min < sigma_blur_max, got {sigma_blur_min}, {self.sigma_blur_max}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.check_monotone()

    def log_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        blur = self.sigma_blur_min * (self.sigma_blur_max / self.sigma_blur_min) ** t
        tau = (blur**2 - self.sigma_blur_min**2) / 2
        decay = -self._freq.to(t.device) * tau[:, None, None, None]
        log_a = torch.clamp(decay, min=math.log(self.d_min))
        log_s = math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)
        return log_a, log_s[:, None, None, None]

    def dc_prior_bias(self, images: Tensor) -> float:
        """Mean nats that the prior N(0, s(T)^2 I) misses on the never-noised DC coefficient: E[y_DC^2] /
        (2 s(T)^2) (a_DC = 1, so x_T's DC is y_DC + s(T) eps, not s(T) eps)."""
        y = self.to_spectral(images.to(torch.float64))[..., 0, 0]
        return float(y.square().sum(-1).mean() / (2 * self.sigma_max**2))

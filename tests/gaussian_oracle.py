"""The Gaussian oracle of the tests and benchmarks: data whose every marginal is known in closed form under every
SDE (docs/math.md §3, 4, 8.6, 8.10-8.12), with exact scores, denoisers, log-densities and the statistics of samples.

Gaussian data N(m, S) (`GaussianData`, for a forward process given by its coefficients a, std and dense Sigma),
x_t = a x_0 + std Sigma^{1/2} z:

    p_t = N(a m, C_t),  C_t = a^2 S + std^2 Sigma,
    grad log p_t(x) = -C_t^{-1} (x - a m),
    E[x_0 | x_t] = m + a S C_t^{-1} (x_t - a m)       (Gaussian conditioning).

Gaussian mixtures (`GaussianMixture`, for an SDE object): for data x_0 ~ sum_k w_k N(m_k, S_k) and a forward process
x_t = a(t) x_0 + noise, noise ~ N(0, v(t) Sigma),

    p_t = sum_k w_k N(a m_k, C_k(t)),   C_k(t) = a^2 S_k + v(t) Sigma,
    grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - a m_k),   r_k = softmax_k(log w_k + log N(x; a m_k, C_k)).

v(t) is the EXACT noise variance of the SDE started at t = 0: v = std(t)^2 - (a(t)/a(0))^2 std(0)^2, which is
std(t)^2 for the VP family and sigma(t)^2 - sigma(0)^2 for VE (sde.marginal_std uses sigma(t), docs/math.md §4). With it
the probability-flow ODE carries p_t exactly, so a likelihood with the exact end-point density p_T equals log p_0.

Statistics of samples against a Gaussian law, each with its exact-sampling null: `moment_statistics` (KL of the
fitted Gaussian, whitened variance ratio), `covariance_zscores` (per-entry covariance z-scores), and
`GaussianMixture.fit_error` for mixtures.

Used by the tests and by benchmarks/ (`from tests.gaussian_oracle import ...`, run from the repository root). The
independent numpy references for the GFF spectra are in tests/spectra.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sde_lib import NIVESDE, NIVPSDE, SDE, VESDE, VPSDE, Covariance, GFFCovariance, SubVPSDE


def random_spd(D: int, generator: torch.Generator, low: float, high: float) -> Tensor:
    """A dense random SPD (D, D) float64 matrix with eigenvalues uniform in [low, high] and random eigenvectors."""
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    eig = low + (high - low) * torch.rand(D, generator=generator, dtype=torch.float64)
    return (q * eig) @ q.T


def gaussian_kl(m0: Tensor, S0: Tensor, m1: Tensor, S1: Tensor) -> Tensor:
    """KL(N(m0, S0) || N(m1, S1)) = 1/2 [tr(S1^-1 S0) - D + (m1-m0)^T S1^-1 (m1-m0) + log det S1 - log det S0]."""
    L1 = torch.linalg.cholesky(S1)
    D = m0.shape[-1]
    tr = torch.cholesky_solve(S0, L1).diagonal(dim1=-2, dim2=-1).sum(-1)
    dm = (m1 - m0).unsqueeze(-1)
    maha = (dm * torch.cholesky_solve(dm, L1)).sum((-2, -1))
    logdet1 = 2 * L1.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet0 = torch.linalg.slogdet(S0)[1]
    return 0.5 * (tr - D + maha + logdet1 - logdet0)


def fit_kl_null(n: int, D: int) -> tuple[float, float]:
    """Mean and standard deviation of KL(N(mean_hat, cov_hat) || N(m, S)) for n exact samples (MLE fit, /n).

    Exact mean: with W = n cov_hat ~ Wishart(S, n - 1) and mean_hat ~ N(m, S / n),
        E[KL] = 1/2 [D (n-1)/n - D + D/n - E log det(S^-1 cov_hat)],
        E log det(S^-1 W) = sum_{i=1}^{D} psi((n - i) / 2) + D log 2.
    The standard deviation uses the large-n law 2 n KL ~ chi^2 with D + D (D + 1) / 2 degrees of freedom.
    """
    i = torch.arange(1, D + 1, dtype=torch.float64)
    e_logdet = float(torch.special.digamma((n - i) / 2).sum()) + D * math.log(2.0) - D * math.log(n)
    mean = 0.5 * (D * (n - 1) / n - D + D / n - e_logdet)
    dof = D + D * (D + 1) / 2
    return mean, math.sqrt(2 * dof) / (2 * n)


def moment_statistics(x: Tensor, mean: Tensor, cov: Tensor) -> dict[str, float]:
    """How far samples x (n, C, H, W) are from N(mean, cov) (flat (D,), (D, D)), with each statistic's null law.

    * kl_excess: KL(N(mean_hat, cov_hat) || N(mean, cov)) minus its exact-sampling mean (`fit_kl_null`); kl_sd is
      its exact-sampling standard deviation. Catches any error in the mean or the covariance.
    * var_excess: tr(cov^-1 cov_hat) / D - (n - 1) / n, the whitened variance ratio error (0 in mean for exact
      samples, n tr(cov^-1 cov_hat) ~ chi^2 with D (n - 1) degrees of freedom); var_sd = sqrt(2 D (n-1)) / (n D).
    * mean_err, cov_err: the largest absolute entry errors (reported, not tested).
    """
    n = x.shape[0]
    D = mean.shape[-1]
    flat = x.reshape(n, -1).to(torch.float64)
    m_hat = flat.mean(0)
    S_hat = torch.cov(flat.T, correction=0)
    null_mean, null_sd = fit_kl_null(n, D)
    ratio = torch.linalg.solve(cov, S_hat).diagonal().sum() / D
    return {
        "kl_excess": float(gaussian_kl(m_hat, S_hat, mean, cov)) - null_mean,
        "kl_sd": null_sd,
        "var_excess": float(ratio) - (n - 1) / n,
        "var_sd": math.sqrt(2 * D * (n - 1)) / (n * D),
        "mean_err": float((m_hat - mean).abs().max()),
        "cov_err": float((S_hat - cov).abs().max()),
    }


def covariance_zscores(samples: Tensor, target: Tensor, mean: Tensor | None = None) -> Tensor:
    """Per-entry z-scores of the empirical covariance of `samples` (n, D) against `target` (D, D) (docs/math.md §8.6).

    z_ij = (C_emp,ij - Sigma_ij) / sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n), the Gaussian-sample standard error,
    over the D (D + 1) / 2 entries i <= j. `mean` (D,) is the known mean (zero if None); it is not re-estimated.
    A correct sampler gives max |z| < 4.5 and mean z^2 near 1; the criterion is scale-free.
    """
    x = samples.to(torch.float64)
    if mean is not None:
        x = x - mean.to(torch.float64)
    n, D = x.shape
    emp = x.T @ x / n
    d = torch.diagonal(target)
    se = torch.sqrt((d[:, None] * d[None, :] + target**2) / n)
    iu = torch.triu_indices(D, D)
    return ((emp - target) / se)[iu[0], iu[1]]


@dataclass
class GaussianData:
    """Data x_0 ~ N(mean, cov) on images of `shape` (C, H, W); mean (C, H, W), cov dense (D, D), float64."""

    mean: Tensor
    cov: Tensor

    @classmethod
    def random(cls, shape: tuple[int, int, int], generator: torch.Generator) -> GaussianData:
        D = math.prod(shape)
        mean = torch.randn(shape, generator=generator, dtype=torch.float64)
        return cls(mean, random_spd(D, generator, 0.1, 1.1))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def marginal_cov(self, a: float, std: float, sigma: Tensor) -> Tensor:
        """C_t = a^2 S + std^2 Sigma for the dense noise covariance `sigma`."""
        return a**2 * self.cov + std**2 * sigma

    def score(self, x: Tensor, a: float, std: float, sigma: Tensor) -> Tensor:
        """grad log p_t(x) = -C_t^{-1}(x - a m) for x of shape (B, C, H, W)."""
        r = (x - a * self.mean).flatten(1)
        s = -torch.linalg.solve(self.marginal_cov(a, std, sigma), r.T).T
        return s.reshape(x.shape)

    def posterior_mean(self, x: Tensor, a: float, std: float, sigma: Tensor) -> Tensor:
        """E[x_0 | x_t = x] = m + a S C_t^{-1}(x - a m) for x of shape (B, C, H, W)."""
        r = (x - a * self.mean).flatten(1)
        w = torch.linalg.solve(self.marginal_cov(a, std, sigma), r.T)
        return self.mean + (a * self.cov @ w).T.reshape(x.shape)


def exact_noise_variance(sde: SDE, t: Tensor) -> Tensor:
    """v(t) = std(t)^2 - (a(t) / a(0))^2 std(0)^2: the noise variance of x_t given x_0 for the SDE started at 0."""
    zero = torch.zeros_like(t)
    ratio = sde.mean_coeff(t) / sde.mean_coeff(zero)
    return sde.marginal_std(t) ** 2 - ratio**2 * sde.marginal_std(zero) ** 2


@dataclass
class GaussianMixture:
    """sum_k w_k N(m_k, S_k) on images of shape (C, H, W): weights (K,), means (K, D), covs (K, D, D), float64."""

    weights: Tensor
    means: Tensor
    covs: Tensor
    shape: tuple[int, int, int]

    @property
    def D(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def gaussian(cls, shape: tuple[int, int, int], generator: torch.Generator, low=0.2, high=1.5) -> GaussianMixture:
        """One dense Gaussian N(m, S): m ~ 0.5 N(0, I), S random SPD with eigenvalues in [low, high].

        A random orthogonal eigenbasis makes S generic, so it does not commute with any GFF Sigma.
        """
        D = math.prod(shape)
        mean = 0.5 * torch.randn(1, D, generator=generator, dtype=torch.float64)
        cov = random_spd(D, generator, low, high)[None]
        return cls(torch.ones(1, dtype=torch.float64), mean, cov, tuple(shape))

    @classmethod
    def mixture(
        cls,
        shape: tuple[int, int, int],
        generator: torch.Generator,
        weights: tuple[float, ...] = (0.5, 0.3, 0.2),
        separation: float = 0.5,
        low: float = 0.02,
        high: float = 0.3,
    ) -> GaussianMixture:
        """K = len(weights) components with means separation * N(0, I) apart and dense SPD covariances."""
        D = math.prod(shape)
        K = len(weights)
        means = separation * torch.randn(K, D, generator=generator, dtype=torch.float64)
        covs = torch.stack([random_spd(D, generator, low, high) for _ in range(K)])
        w = torch.tensor(weights, dtype=torch.float64)
        return cls(w / w.sum(), means, covs, tuple(shape))

    # ---- the data law -----------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n exact samples, shape (n, C, H, W), float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, 1, generator=generator, dtype=torch.float64)
        L = torch.linalg.cholesky(self.covs)
        return (self.means[k] + (L[k] @ z).squeeze(-1)).reshape(n, *self.shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) per sample, x (B, C, H, W) -> (B,)."""
        return torch.logsumexp(self._component_logp(x.reshape(x.shape[0], -1), self.means, self.covs), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """r_k(x) = P(component k | x) under this mixture, shape (B, K)."""
        return torch.softmax(self._component_logp(x.reshape(x.shape[0], -1), self.means, self.covs), dim=-1)

    def _component_logp(self, x: Tensor, means: Tensor, covs: Tensor) -> Tensor:
        L = torch.linalg.cholesky(covs)  # (K, D, D)
        white = self._whiten(x, means, L)  # (K, D, B)
        logdet = 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        quad = white.square().sum(1).T  # (B, K)
        return self.weights.log() - 0.5 * (quad + logdet + self.D * math.log(2 * math.pi))

    @staticmethod
    def _whiten(x: Tensor, means: Tensor, L: Tensor) -> Tensor:
        """L_k^{-1} (x - m_k) for flat x (B, D): shape (K, D, B) (one triangular solve per component)."""
        diff = x.T[None] - means[:, :, None]
        return torch.linalg.solve_triangular(L, diff, upper=False)

    # ---- marginals under an SDE ---------------------------------------------------------------
    def marginal(self, sde: SDE, t: float, sigma: Tensor | None = None) -> GaussianMixture:
        """p_t: means a m_k, covariances a^2 S_k + v(t) Sigma (`sigma` = dense Sigma, built from sde.cov if None)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        a = float(sde.mean_coeff(tt))
        v = float(exact_noise_variance(sde, tt))
        sigma = sde.cov.dense(torch.float64) if sigma is None else sigma
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + v * sigma, self.shape)

    def score(self, x: Tensor) -> Tensor:
        """grad log p(x) = -sum_k r_k C_k^{-1} (x - m_k), differentiable in x; keeps x's dtype."""
        precisions, logdets = self._precisions()
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        diff = flat[None] - self.means[:, None, :]  # (K, B, D)
        grads = -diff @ precisions  # -C_k^{-1} (x - m_k), C_k symmetric
        if len(self.weights) == 1:
            return grads[0].reshape(x.shape).to(x.dtype)
        quad = -(diff * grads).sum(-1).T  # (B, K)
        r = torch.softmax(self.weights.log() - 0.5 * (quad + logdets), dim=-1)
        return torch.einsum("bk,kbd->bd", r, grads).reshape(x.shape).to(x.dtype)

    def _precisions(self) -> tuple[Tensor, Tensor]:
        """(C_k^{-1}, log det C_k), computed once per mixture."""
        if not hasattr(self, "_cached_precisions"):
            L = torch.linalg.cholesky(self.covs)
            self._cached_precisions = torch.cholesky_inverse(L), 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return self._cached_precisions

    def score_fn(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """score_fn(x, t) = grad log p_t(x) for the SDE; t (B,) may hold several times (grouped by value)."""
        sigma = sde.cov.dense(torch.float64)
        recent: dict[float, GaussianMixture] = {}

        def marginal(t: float) -> GaussianMixture:
            if t not in recent:
                if len(recent) >= 4:
                    recent.pop(next(iter(recent)))
                recent[t] = self.marginal(sde, t, sigma)
            return recent[t]

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            times = t.detach().to(torch.float64).cpu()
            values = torch.unique(times)
            if values.numel() == 1:
                return marginal(float(values[0])).score(x)
            out = torch.zeros_like(x)
            for value in values:
                rows = (times == value).nonzero().squeeze(-1).to(x.device)
                out = out.index_add(0, rows, marginal(float(value)).score(x[rows]))
            return out

        return score_fn

    def fit_error(self, x: Tensor) -> float:
        """sum_k w_k KL(N(m_k_hat, S_k_hat) || N(m_k, S_k)) + KL(w_hat || w) with soft assignment by the exact
        responsibilities r_k(x): w_hat = mean r_k, (m_k_hat, S_k_hat) the r_k-weighted mean and covariance.

        A low-variance error of samples from a mixture (its exact-sampling mean is `fit_error_null`).
        """
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        r = self.responsibilities(x.to(torch.float64))
        w_hat = r.mean(0)
        total = float((w_hat * (w_hat / self.weights).log()).sum())
        for k in range(len(self.weights)):
            rk = r[:, k] / r[:, k].sum()
            m = rk @ flat
            diff = flat - m
            S = (diff * rk[:, None]).T @ diff
            total += float(self.weights[k]) * float(gaussian_kl(m, S, self.means[k], self.covs[k]))
        return total

    def fit_error_null(self, n: int, replicates: int, seed: int = 123) -> tuple[float, float]:
        """Mean and standard deviation of `fit_error` over `replicates` sets of n exact samples."""
        g = torch.Generator().manual_seed(seed)
        errs = torch.tensor([self.fit_error(self.sample(n, g)) for _ in range(replicates)], dtype=torch.float64)
        return float(errs.mean()), float(errs.std())

    def end_logp(self, sde: SDE) -> Callable[[Tensor], Tensor]:
        """log p_T(z): the exact end-point density, to pass as log_likelihood's prior_logp."""
        end = self.marginal(sde, sde.T)
        return end.log_prob


# ---- the problems of the sampler and likelihood tests and benchmarks: 1x8x8 images in GFF noise ------------------
SHAPE = (1, 8, 8)  # D = 64: the dense float64 references stay cheap


def gff_cov(shape: tuple[int, int, int] = SHAPE, power: float = 1.0) -> GFFCovariance:
    """The GFF noise covariance of the problems (docs/math.md §1): power 1 on 1x8x8 images unless told otherwise."""
    return GFFCovariance(shape, power=power)


def oracle_sde(name: str, cov: Covariance, **options) -> SDE:
    """The SDE class `name` with its default hyper-parameters: nivp, subvp, nive with noise covariance `cov` (so
    'subvp' is sub-VP in GFF noise, unlike sde_lib.make_sde's isotropic one), and the isotropic classes vp (VPSDE)
    and ve (VESDE) on cov's image shape. `options` (e.g. N) go to the constructor."""
    if name in ("vp", "ve"):
        return {"vp": VPSDE, "ve": VESDE}[name](shape=cov.shape, **options)
    return {"nivp": NIVPSDE, "subvp": SubVPSDE, "nive": NIVESDE}[name](cov=cov, **options)


# ---- the spectral family (docs/math.md §11): data diagonal in an SDE's basis ------------------------------------
class DiagonalGaussian:
    """Data whose coefficients in the SDE's basis are independent, y0_k ~ N(mu_k, v_k): the marginal at t is
    N(a_k mu_k, a_k^2 v_k + s_k^2), the exact eps e_k = s_k (y_k - a_k mu_k) / (a_k^2 v_k + s_k^2), and the
    probability flow keeps each coefficient's standardised value (y_k - a_k mu_k) / sqrt(a_k^2 v_k + s_k^2)."""

    def __init__(self, mu, var):
        self.mu, self.var = mu, var

    @classmethod
    def random(cls, sde, seed: int):
        g = torch.Generator().manual_seed(seed)
        shape = sde.cov.shape
        mean = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
        return cls(mean, 0.05 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64))

    def standardise(self, sde, y, t):
        a, s = sde.spectral_scales(torch.tensor([t], dtype=torch.float64))
        return a * self.mu, torch.sqrt(a**2 * self.var + s**2)

    def model(self, sde):
        """The exact white-noise predictor as a samplers.ScoreModel at the SDE's marginal scales."""

        def eps(x, t):
            a, s = sde.spectral_scales(t)
            y = sde.to_spectral(x)
            return sde.from_spectral(s * (y - a * self.mu) / (a**2 * self.var + s**2))

        from samplers import ScoreModel

        return ScoreModel(sde, eps, "eps", sde.marginal)

    def flow(self, sde, y_T, t: float):
        """The exact probability-flow map of y_T from T to t."""
        m_T, sd_T = self.standardise(sde, y_T, sde.T)
        m_t, sd_t = self.standardise(sde, y_T, t)
        return m_t + sd_t * (y_T - m_T) / sd_T

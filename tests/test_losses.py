"""The training losses against closed forms (docs/math.md §2-4, 8.9, 8.10).

Data are Gaussian, x_0 ~ N(m, S) on 1x4x4 images (D = 16), and the networks are linear, so every expected loss
is analytic. With x_t = a x_0 + s L eps (L = Sigma^{1/2}) and an eps-predictor W x + b:

    E||W x_t + b - eps||^2 = ||a W m + b||^2 + a^2 tr(W S W^T) + ||s W L - I||_F^2,

and for the NCSN form u = W x + b:  E||L u(x_t) + eps||^2 = ||L (W m + b)||^2 + tr(L W S W^T L) + ||s L W L + I||_F^2.
The average over noise levels is exact for the discrete losses and a quadrature (scipy.integrate.quad) for DSM.
a(t), s(t), the DDPM schedule and the NCSN sigmas are written here from docs/math.md, independently of sde_lib.
Monte Carlo means are compared with a tolerance of 5 standard errors, estimated from the same samples.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch import nn

from sde_lib import NIVESDE, NIVPSDE, VESDE, VPSDE, GFFCovariance, IdentityCovariance, SubVPSDE
from tests.gaussian_oracle import GaussianData
from tests.spectra import dense_from_spectrum, gff_eigenvalues
from training import get_loss, score_fn_for
from training.losses import EPS_T, DSMLoss, NCSNLoss, NIDDPMLoss, time_of_log_snr

SHAPE = (1, 4, 4)
D = 16
BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.01, 5.0
MC_SAMPLES = 40_000
Z_TOL = 5.0  # standard errors


# ---- references written from docs/math.md -------------------------------------------------------------------
def vp_levels(t):
    """a(t) = exp(-B/2), s(t) = sqrt(1 - exp(-B)), B(t) = beta_min t + t^2 (beta_max - beta_min) / 2 (docs/math.md §3).

    t a float or a numpy array."""
    B = BETA_MIN * t + 0.5 * t**2 * (BETA_MAX - BETA_MIN)
    return np.exp(-0.5 * B), np.sqrt(-np.expm1(-B))


def ve_levels(t):
    """a = 1, s = sigma_min (sigma_max / sigma_min)^t (docs/math.md §4); t a float or a numpy array."""
    return np.ones_like(t), SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def ddpm_abar(N: int) -> np.ndarray:
    """abar_i = prod_{j<=i} (1 - beta_j), beta linear from beta_min / N to beta_max / N (docs/math.md §2)."""
    return np.cumprod(1.0 - np.linspace(BETA_MIN / N, BETA_MAX / N, N))


def ncsn_sigmas(N: int) -> np.ndarray:
    """The NCSN training levels sigma(t_i) at the discrete times t_i = (i + 1) / N (docs/math.md §4)."""
    return ve_levels(np.arange(1, N + 1) / N)[1]


def dense_sigma(coloured: bool) -> torch.Tensor:
    if coloured:
        return torch.from_numpy(dense_from_spectrum(gff_eigenvalues(4, 4, 1.0)[None]))
    return torch.eye(D, dtype=torch.float64)


def sym_power(A: torch.Tensor, p: float) -> torch.Tensor:
    w, V = torch.linalg.eigh(A)
    return (V * w**p) @ V.T


def make_sde(kind: str, coloured: bool, N: int = 1000):
    cov = GFFCovariance(SHAPE, power=1.0) if coloured else IdentityCovariance(SHAPE)
    if kind == "vp":
        return NIVPSDE(BETA_MIN, BETA_MAX, N, cov=cov)
    return NIVESDE(SIGMA_MIN, SIGMA_MAX, N, cov=cov)


class Linear(nn.Module):
    """x -> W x + b on flattened images (float64), independent of t."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.W.T + self.b).reshape(x.shape)


class OptimalEps(nn.Module):
    """eps*(x_t) = E[eps | x_t] = s L C^{-1} (x_t - a m), C = a^2 S + s^2 Sigma (Gaussian conditioning,
    docs/math.md §8.10), plus an optional linear perturbation Delta x + delta."""

    def __init__(self, data: GaussianData, sigma: torch.Tensor, levels, delta=None):
        super().__init__()
        self.data, self.sigma, self.L, self.levels, self.delta = data, sigma, sym_power(sigma, 0.5), levels, delta

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.levels(t)
        C = a[:, None, None] ** 2 * self.data.cov + s[:, None, None] ** 2 * self.sigma
        r = x.flatten(1) - a[:, None] * self.data.mean.flatten()
        out = s[:, None] * (torch.linalg.solve(C, r[..., None])[..., 0] @ self.L)
        if self.delta is not None:
            Delta, db = self.delta
            out = out + x.flatten(1) @ Delta.T + db
        return out.reshape(x.shape)


def gaussian_batch(data: GaussianData, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g, dtype=torch.float64)
    return (data.mean.flatten() + z @ torch.linalg.cholesky(data.cov).T).reshape(n, *SHAPE)


def per_sample_losses(loss, model, sde, x0: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-sample ||residual||^2 / D of the loss (their mean is loss(model, sde, x0, seed): see the test below)."""
    x_t, t, eps = loss.perturb(sde, x0, seed)
    return loss.residual(model, sde, x_t, t, eps).flatten(1).square().mean(1)


def level_average(loss_name: str, kind: str, f, N: int) -> float:
    """E over the loss's noise levels of f(a, s): exact sum (discrete) or quadrature (continuous DSM)."""
    if loss_name == "ddpm":
        abar = ddpm_abar(N)
        return float(np.mean([f(math.sqrt(ab), math.sqrt(1 - ab)) for ab in abar]))
    if loss_name == "ncsn":
        return float(np.mean([f(1.0, s) for s in ncsn_sigmas(N)]))
    levels = vp_levels if kind == "vp" else ve_levels
    value, _ = scipy.integrate.quad(
        lambda t: f(*map(float, levels(t))), EPS_T, 1.0, limit=200, epsabs=1e-10, epsrel=1e-10
    )
    return value / (1.0 - EPS_T)


@pytest.fixture(scope="module")
def data() -> GaussianData:
    return GaussianData.random(SHAPE, torch.Generator().manual_seed(3))


CASES = [  # (loss, sde kind, N)
    ("ddpm", "vp", 1000),
    ("dsm", "vp", 1000),
    ("dsm", "ve", 1000),
    ("ncsn", "ve", 10),
]


@pytest.mark.parametrize("coloured", [True, False], ids=["gff", "isotropic"])
@pytest.mark.parametrize("loss_name,kind,N", CASES)
def test_loss_of_linear_network_equals_closed_form(data, loss_name, kind, N, coloured):
    g = torch.Generator().manual_seed(11)
    W = 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    b = 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
    model, sde, loss = Linear(W, b), make_sde(kind, coloured, N), get_loss(loss_name)
    Sigma = dense_sigma(coloured)
    L, I, S, m = sym_power(Sigma, 0.5), torch.eye(D, dtype=torch.float64), data.cov, data.mean.flatten()

    if loss_name == "ncsn":

        def expected(a: float, s: float) -> float:
            return float(
                (L @ (W @ m + b)).square().sum() + torch.trace(L @ W @ S @ W.T @ L) + (s * L @ W @ L + I).square().sum()
            )
    else:

        def expected(a: float, s: float) -> float:
            return float(
                (a * W @ m + b).square().sum() + a**2 * torch.trace(W @ S @ W.T) + (s * W @ L - I).square().sum()
            )

    exact = level_average(loss_name, kind, expected, N) / D
    values = per_sample_losses(loss, model, sde, gaussian_batch(data, MC_SAMPLES, 0), 0)
    se = values.std().item() / math.sqrt(values.numel())
    assert se < 0.02 * exact  # the check is informative
    assert abs(values.mean().item() - exact) < Z_TOL * se, (values.mean().item(), exact, se)


def _optimal_levels(loss_name: str, kind: str, N: int):
    """(a, s) as (B,) tensors at the network times t the loss feeds in (t = (i + 1) / N for NI-DDPM)."""
    if loss_name == "ddpm":
        abar = torch.from_numpy(ddpm_abar(N))

        def levels(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ab = abar[torch.round(t * N).long() - 1]
            return ab.sqrt(), (1 - ab).sqrt()

        return levels
    levels = vp_levels if kind == "vp" else ve_levels
    return lambda t: tuple(torch.from_numpy(v) for v in levels(t.numpy()))


@pytest.mark.parametrize("loss_name,kind", [("ddpm", "vp"), ("dsm", "vp"), ("dsm", "ve")])
def test_optimal_predictor_minimises_the_loss(data, loss_name, kind):
    """docs/math.md §8.10: eps* = E[eps | x_t] attains E||eps* - eps||^2 = tr(I - s^2 L C^{-1} L), and adding any
    Delta x + d raises the loss by exactly E||Delta x_t + d||^2 = ||a Delta m + d||^2 + tr(Delta C Delta^T) (paired
    samples)."""
    N = 1000
    sde, loss, Sigma = make_sde(kind, True, N), get_loss(loss_name), dense_sigma(True)
    levels = _optimal_levels(loss_name, kind, N)
    L, S, m = sym_power(Sigma, 0.5), data.cov, data.mean.flatten()
    g = torch.Generator().manual_seed(5)
    Delta = 0.05 * torch.randn(D, D, generator=g, dtype=torch.float64)
    d = 0.05 * torch.randn(D, generator=g, dtype=torch.float64)
    optimal = OptimalEps(data, Sigma, levels)
    perturbed = OptimalEps(data, Sigma, levels, delta=(Delta, d))

    def optimum(a: float, s: float) -> float:
        C = a**2 * S + s**2 * Sigma
        return float(D - s**2 * torch.trace(L @ torch.linalg.solve(C, L)))

    def excess(a: float, s: float) -> float:
        C = a**2 * S + s**2 * Sigma
        return float((a * Delta @ m + d).square().sum() + torch.trace(Delta @ C @ Delta.T))

    x0 = gaussian_batch(data, MC_SAMPLES, 7)
    best = per_sample_losses(loss, optimal, sde, x0, seed=21)
    worse = per_sample_losses(loss, perturbed, sde, x0, seed=21)
    n = best.numel()
    exact_best = level_average(loss_name, kind, optimum, N) / D
    exact_excess = level_average(loss_name, kind, excess, N) / D
    assert abs(best.mean().item() - exact_best) < Z_TOL * best.std().item() / math.sqrt(n)
    diff = worse - best
    assert exact_excess > 0 and diff.mean().item() > 0
    assert abs(diff.mean().item() - exact_excess) < Z_TOL * diff.std().item() / math.sqrt(n)


@pytest.mark.parametrize("coloured", [True, False], ids=["gff", "isotropic"])
@pytest.mark.parametrize("loss_name,kind,N", CASES)
def test_loss_identity_and_perturbation(data, loss_name, kind, N, coloured):
    """docs/math.md §8.9: s^2 (s_theta - s_cond)^T Sigma (s_theta - s_cond) = ||residual||^2,
    s_cond = -Sigma^{-1/2} eps / s, s_theta the score the loss exports for sampling (to 1e-12, float64); and
    x_t = a x_0 + s Sigma^{1/2} eps."""
    g = torch.Generator().manual_seed(2)
    model = Linear(torch.randn(D, D, generator=g, dtype=torch.float64) / 4, torch.randn(D, generator=g).double())
    sde, loss, Sigma = make_sde(kind, coloured, N), get_loss(loss_name), dense_sigma(coloured)
    x0 = gaussian_batch(data, 64, 1)
    x_t, t, eps = loss.perturb(sde, x0, seed=9)
    lv = loss.levels(sde, 64, seed=9)
    torch.testing.assert_close(t, lv.t)
    a, s = lv.a[:, None], lv.s[:, None]
    L = sym_power(Sigma, 0.5)
    torch.testing.assert_close(x_t.flatten(1), a * x0.flatten(1) + s * eps.flatten(1) @ L, rtol=0, atol=1e-12)

    score = score_fn_for(model, sde, loss_name)(x_t, t).flatten(1)
    s_cond = -eps.flatten(1) @ sym_power(Sigma, -0.5) / s
    e = score - s_cond
    lhs = s[:, 0] ** 2 * ((e @ Sigma) * e).sum(1)
    rhs = loss.residual(model, sde, x_t, t, eps).flatten(1).square().sum(1)
    assert (lhs - rhs).abs().max().item() <= 1e-12 * rhs.max().item()


@pytest.mark.parametrize("loss_name,kind,N", CASES)
def test_loss_is_the_mean_of_the_per_sample_losses(data, loss_name, kind, N):
    model = Linear(0.2 * torch.eye(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64))
    sde, loss, x0 = make_sde(kind, True, N), get_loss(loss_name), gaussian_batch(data, 32, 4)
    value = loss(model, sde, x0, 17)
    assert value.dim() == 0
    assert value.item() == pytest.approx(per_sample_losses(loss, model, sde, x0, 17).mean().item(), rel=1e-12)


def test_noise_levels_have_the_stated_laws():
    """DSM: t ~ U(eps_t, 1) (Kolmogorov-Smirnov); NI-DDPM and NCSN: i ~ U{0..N-1} (chi-square), t = (i + 1) / N."""
    sde = make_sde("vp", True)
    t = DSMLoss().levels(sde, 20_000, seed=4).t.numpy()
    assert t.min() >= EPS_T and t.max() <= 1.0
    assert scipy.stats.kstest(t, scipy.stats.uniform(loc=EPS_T, scale=1 - EPS_T).cdf).pvalue > 1e-3
    for loss, sde in [(NIDDPMLoss(), make_sde("vp", True, 50)), (NCSNLoss(), make_sde("ve", True, 50))]:
        lv = loss.levels(sde, 50_000, seed=8)
        i = lv.t.numpy() * 50 - 1
        np.testing.assert_allclose(i, np.round(i), atol=1e-9)
        assert scipy.stats.chisquare(np.bincount(np.round(i).astype(int), minlength=50)).pvalue > 1e-3


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_lognormal_time_sampling_draws_ln_std_over_a_from_the_normal_law(kind):
    """time_sampling="lognormal": ln(s(t) / a(t)) ~ N(mean, std^2) (Kolmogorov-Smirnov), each level within 1e-5 of
    its normal draw (the interpolated inverse of log-SNR); levels outside [eps_t, T] clamp to the ends."""
    sde = make_sde(kind, True)
    mean, std = (-1.2, 1.2) if kind == "vp" else (-1.5, 0.6)  # the ends are 5 std or more away
    lv = DSMLoss(time_sampling="lognormal", lognormal=(mean, std)).levels(sde, 20_000, seed=5)
    log_sigma = torch.log(lv.s / lv.a).numpy()
    assert lv.t.min() >= EPS_T and lv.t.max() <= 1.0
    assert scipy.stats.kstest(log_sigma, scipy.stats.norm(mean, std).cdf).pvalue > 1e-3
    z = np.random.default_rng([5, 0x4C45564C]).standard_normal(20_000)  # the loss's stream of levels
    np.testing.assert_allclose(log_sigma, mean + std * z, rtol=0, atol=1e-5)
    np.testing.assert_allclose(time_of_log_snr(sde, EPS_T)(np.array([100.0, -100.0])), [EPS_T, 1.0], rtol=1e-12)
    with pytest.raises(ValueError, match="time_sampling"):
        DSMLoss(time_sampling="beta")


def test_losses_are_deterministic_in_the_seed():
    sde, model = make_sde("vp", True), Linear(torch.eye(D, dtype=torch.float64) * 0.1, torch.zeros(D).double())
    x0 = torch.randn(8, *SHAPE, dtype=torch.float64)
    loss = get_loss("dsm")
    assert loss(model, sde, x0, 3).item() == loss(model, sde, x0, 3).item()
    assert loss(model, sde, x0, 3).item() != loss(model, sde, x0, 4).item()


def test_losses_refuse_sdes_they_do_not_apply_to():
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("l2")
    x0 = torch.zeros(2, *SHAPE)
    model = Linear(torch.eye(D), torch.zeros(D))
    with pytest.raises(ValueError, match="VP-family"):
        get_loss("ddpm")(model, VESDE(shape=SHAPE), x0, 0)
    with pytest.raises(ValueError, match="VP-family"):
        get_loss("ddpm")(model, SubVPSDE(shape=SHAPE), x0, 0)
    with pytest.raises(ValueError, match="VE-family"):
        get_loss("ncsn")(model, VPSDE(shape=SHAPE), x0, 0)
    with pytest.raises(ValueError, match="eps_t"):
        DSMLoss(eps_t=1.0)

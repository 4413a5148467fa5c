"""sde_lib.sde against the closed forms of docs/math.md §3 (NIVP, VP, sub-VP) and 4 (NI-VE, VE).

Every SDE class is checked for: marginal_prob against a fine Euler-Maruyama simulation of sde.sde; prior_logp
against scipy with the dense covariance; discretize (DDPM / SMLD / Euler-Maruyama forms and the index rule); the
reverse SDE and probability-flow drifts of Gaussian data N(m, S), with S dense and not commuting with Sigma,
against dense algebra and against the evolution of the marginal covariance; score <-> eps; Tweedie denoising
against Gaussian conditioning (docs/math.md §8.10); the isotropic classes as the Sigma = I case; dtype preservation.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from samplers import ScoreModel
from sde_lib import NIVESDE, NIVPSDE, VESDE, VPSDE, GFFCovariance, IdentityCovariance, SubVPSDE
from tests.gaussian_oracle import GaussianData, covariance_zscores

pytestmark = pytest.mark.usefixtures("one_thread")

BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0
N_STEPS = 1000


@dataclass
class ClosedForm:
    """The SDE dx = f(t) x dt + g(t) Sigma^{1/2} dw and its marginal N(a(t) x_0, var(t) Sigma), from
    docs/math.md §3 / 4."""

    family: str  # "vp", "subvp" or "ve"

    def B(self, t):  # int_0^t beta
        return BETA_MIN * t + t**2 * (BETA_MAX - BETA_MIN) / 2

    def beta(self, t):
        return BETA_MIN + t * (BETA_MAX - BETA_MIN)

    def sigma(self, t):
        return SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t

    def a(self, t):
        return 1.0 if self.family == "ve" else math.exp(-self.B(t) / 2)

    def var(self, t):
        """marginal_prob's std(t)^2; for VE sigma(t)^2, above the exact sigma(t)^2 - sigma(0)^2 by sigma_min^2."""
        if self.family == "ve":
            return self.sigma(t) ** 2
        v = -math.expm1(-self.B(t))
        return v**2 if self.family == "subvp" else v

    def f(self, t):
        return 0.0 if self.family == "ve" else -self.beta(t) / 2

    def g2(self, t):
        if self.family == "ve":
            return 2 * self.sigma(t) ** 2 * math.log(SIGMA_MAX / SIGMA_MIN)
        if self.family == "subvp":
            return self.beta(t) * -math.expm1(-2 * self.B(t))
        return self.beta(t)


def make_case(name: str, shape: tuple[int, int, int], power: float = 1.0):
    """(sde, closed form) for each SDE class; the NI classes (and sub-VP with a cov) use GFF noise of `power`."""
    gff = GFFCovariance(shape, power=power)
    if name == "vp":
        return VPSDE(BETA_MIN, BETA_MAX, N_STEPS, shape=shape), ClosedForm("vp")
    if name == "nivp":
        return NIVPSDE(BETA_MIN, BETA_MAX, N_STEPS, cov=gff), ClosedForm("vp")
    if name == "subvp":
        return SubVPSDE(BETA_MIN, BETA_MAX, N_STEPS, shape=shape), ClosedForm("subvp")
    if name == "subvp-gff":
        return SubVPSDE(BETA_MIN, BETA_MAX, N_STEPS, cov=gff), ClosedForm("subvp")
    if name == "ve":
        return VESDE(SIGMA_MIN, SIGMA_MAX, N_STEPS, shape=shape), ClosedForm("ve")
    if name == "nive":
        return NIVESDE(SIGMA_MIN, SIGMA_MAX, N_STEPS, cov=gff), ClosedForm("ve")
    raise ValueError(name)


CASES = ["vp", "nivp", "subvp", "subvp-gff", "ve", "nive"]


def batch_t(t: float, B: int, dtype=torch.float64) -> torch.Tensor:
    return torch.full((B,), t, dtype=dtype)


def sqrtm_dense(sigma: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.real(scipy.linalg.sqrtm(sigma.numpy())))


# ---- closed forms and the Euler-Maruyama check of marginal_prob -------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_sde_and_marginal_closed_forms(name):
    shape = (2, 3, 4)
    sde, cf = make_case(name, shape)
    assert sde.T == 1.0 and sde.N == N_STEPS
    x = torch.randn((5, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = [0.0, 1e-5, 0.3, 0.77, 1.0]
    t = torch.tensor(ts, dtype=torch.float64)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    assert drift.shape == x.shape and diffusion.shape == std.shape == (5,)
    for b, tb in enumerate(ts):
        np.testing.assert_allclose(drift[b].numpy(), cf.f(tb) * x[b].numpy(), rtol=1e-12, atol=1e-15)
        assert diffusion[b].item() ** 2 == pytest.approx(cf.g2(tb), rel=1e-12, abs=1e-300)
        np.testing.assert_allclose(mean[b].numpy(), cf.a(tb) * x[b].numpy(), rtol=1e-12)
        assert std[b].item() ** 2 == pytest.approx(cf.var(tb), rel=1e-12, abs=1e-300)
        assert sde.mean_coeff(t)[b].item() == pytest.approx(cf.a(tb), rel=1e-12)
    assert sde.prior_scale == (SIGMA_MAX if cf.family == "ve" else 1.0)
    # A scalar t is broadcast to the batch.
    assert torch.equal(sde.marginal_prob(x, 0.3)[1], torch.full((5,), std[2].item(), dtype=torch.float64))


EM_SHAPE = (1, 4, 4)


def drift_jacobian(sde, x: torch.Tensor, t: float):
    """(f(x), J) with J the Jacobian of the drift of sde.sde at time t, from its values at x and x + e_i."""
    D = x.numel()
    pts = torch.cat([x.reshape(1, D), x.reshape(1, D) + torch.eye(D, dtype=x.dtype)]).reshape(D + 1, *x.shape)
    drift, diffusion = sde.sde(pts, batch_t(t, D + 1))
    drift = drift.flatten(1)
    return drift[0], (drift[1:] - drift[:1]).T, diffusion[0].item()


@pytest.mark.parametrize("name", CASES)
def test_marginal_prob_matches_the_euler_maruyama_law(name):
    """The law of the Euler-Maruyama chain x <- x + f(x, t) dt + g(t) sqrt(dt) Sigma^{1/2} z of sde.sde from a fixed
    x_0, propagated exactly (mean mu <- mu + f(mu) dt, covariance P <- A P A^T + g^2 dt Sigma, A = I + J dt; exact
    because the drift is affine, which is checked), matches marginal_prob: N(a x_0, (std^2 - std(0)^2) Sigma).

    2000 steps per unit time on 1x4x4 to t = 0.25, 0.5, 1. The scheme's first-order bias (measured: it halves with
    dt) is <= 0.24% for the VP / sub-VP covariance, <= 0.6% for the mean (at t = 1, where a = 0.0066) and 0.43% for
    VE (whose variance grows like exp(2 t ln(sigma_max / sigma_min))); the tolerance is 1% of the largest entry.
    For VE, marginal_prob returns std = sigma(t) (score_sde_pytorch's approximation) while the chain started at t = 0
    has the exact variance sigma(t)^2 - sigma(0)^2, hence the target std^2 - std(0)^2 (std(0) = 0 for VP, sub-VP).
    """
    sde, _ = make_case(name, EM_SHAPE, power=1.0)
    D = math.prod(EM_SHAPE)
    sigma = sde.cov.dense()
    x0 = torch.linspace(-1.0, 1.5, D, dtype=torch.float64).reshape(EM_SHAPE)
    probe = torch.randn(EM_SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f, J, _ = drift_jacobian(sde, x0, 0.4)
    affine = J @ (probe - x0).flatten() + f
    np.testing.assert_allclose(sde.sde(probe[None], batch_t(0.4, 1))[0].flatten().numpy(), affine.numpy(), atol=1e-12)
    steps_per_unit, checkpoints = 2000, {500: 0.25, 1000: 0.5, 2000: 1.0}
    dt = 1.0 / steps_per_unit
    mu, P = x0.flatten(), torch.zeros(D, D, dtype=torch.float64)
    std0 = sde.marginal_prob(x0[None], batch_t(0.0, 1))[1].item()
    for k in range(1, steps_per_unit + 1):
        f, J, g = drift_jacobian(sde, mu.reshape(EM_SHAPE), (k - 1) * dt)
        A = torch.eye(D, dtype=torch.float64) + J * dt
        mu, P = mu + f * dt, A @ P @ A.T + g**2 * dt * sigma
        if k in checkpoints:
            mean, std = sde.marginal_prob(x0[None], batch_t(checkpoints[k], 1))
            target = (std.item() ** 2 - std0**2) * sigma
            assert (P - target).abs().max().item() <= 1e-2 * target.abs().max().item()
            assert (mu - mean.flatten()).abs().max().item() <= 1e-2 * mean.abs().max().item()


@pytest.mark.parametrize("name", ["nivp", "subvp-gff", "nive"])
def test_euler_maruyama_paths_match_marginal_prob(name):
    """Monte-Carlo, one case per family (the isotropic classes are the same code with Sigma = I, pinned exactly
    below): 2000 Euler-Maruyama paths of sde.sde (200 steps to t = 0.5, 1x4x4) from a fixed x_0 have the
    mean and covariance of marginal_prob, N(a x_0, (std^2 - std(0)^2) Sigma) (see the test above for std(0)).

    The noise increment g sqrt(dt) Sigma^{1/2} z uses the matrix of cov.sqrt_mul (built once from unit vectors; the
    operator is linear), so the loop stays cheap. Criterion: docs/math.md §8.6's z-scores on the samples whitened by the
    target covariance (136 nearly independent entries: max |z| < 4.5, mean z^2 in [0.6, 1.4], 3.3 null std), and
    the whitened mean (16 entries ~ N(0, 1): max |z| < 4.5, mean z^2 < 2.5, i.e. chi^2_16 / 16 at p < 1e-3). The
    scheme's bias at this step size (<= 0.5% for VP / sub-VP, 2.1% for VE, from the exact scalar recursion) is
    below 0.7 Monte-Carlo standard errors (3.2% per variance entry).
    """
    paths, steps, t_end = 2000, 200, 0.5
    sde, _ = make_case(name, EM_SHAPE, power=1.0)
    D = math.prod(EM_SHAPE)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.linspace(-1.0, 1.5, D, dtype=torch.float64).reshape(EM_SHAPE)
    eye = torch.eye(D, dtype=torch.float64).reshape(D, *EM_SHAPE)
    root = sde.cov.sqrt_mul(eye).reshape(D, D)  # symmetric: rows = columns = Sigma^{1/2} e_i
    x = x0.expand(paths, *EM_SHAPE).clone()
    dt = t_end / steps
    noise = torch.randn(steps, paths, D, generator=gen, dtype=torch.float64) @ root
    for k in range(steps):
        drift, diffusion = sde.sde(x, batch_t(k * dt, paths))
        x = x + drift * dt + diffusion[:, None, None, None] * math.sqrt(dt) * noise[k].reshape(x.shape)
    mean, std = sde.marginal_prob(x0[None], batch_t(t_end, 1))
    std0 = sde.marginal_prob(x0[None], batch_t(0.0, 1))[1]
    target = (std.item() ** 2 - std0.item() ** 2) * sde.cov.dense()
    whiten = torch.linalg.inv(sqrtm_dense(target))
    resid = (x - mean).flatten(1) @ whiten.T
    z = covariance_zscores(resid, torch.eye(D, dtype=torch.float64))
    assert z.abs().max().item() < 4.5 and 0.6 <= z.square().mean().item() <= 1.4, (z.abs().max(), z.square().mean())
    z_mean = resid.mean(0) * math.sqrt(paths)
    assert z_mean.abs().max().item() < 4.5 and z_mean.square().mean().item() < 2.5, z_mean


# ---- prior ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_prior_logp_matches_scipy(name):
    """prior_logp(z) = log N(z; 0, c^2 Sigma) with the dense Sigma (c = 1 for VP, sigma_max for VE)."""
    shape = (2, 3, 4)
    sde, _ = make_case(name, shape, power=1.3)
    z = sde.prior_sampling((6, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = torch.cat([z, 0.3 * z[:2]])  # points away from the typical set too
    c2 = sde.prior_scale**2
    ref = scipy.stats.multivariate_normal(np.zeros(24), c2 * sde.cov.dense().numpy()).logpdf(z.flatten(1).numpy())
    logp = sde.prior_logp(z)
    assert logp.shape == (8,) and logp.dtype == torch.float64
    np.testing.assert_allclose(logp.numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("name", ["nivp", "nive"])
def test_prior_sampling_law(name):
    """prior_sampling draws N(0, c^2 Sigma): whitened z-scores of 20k samples on 1x4x4 (criterion of the EM test)."""
    sde, _ = make_case(name, EM_SHAPE, power=1.5)
    z = sde.prior_sampling((20_000, *EM_SHAPE), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    whiten = torch.linalg.inv(sqrtm_dense(sde.prior_scale**2 * sde.cov.dense()))
    zs = covariance_zscores(z.flatten(1) @ whiten.T, torch.eye(16, dtype=torch.float64))
    assert zs.abs().max().item() < 4.5 and 0.6 <= zs.square().mean().item() <= 1.4


# ---- discretisation ---------------------------------------------------------------------------------------------


def test_discrete_index_rule():
    """i = (t (N - 1) / T).long(), as score_sde_pytorch."""
    sde = NIVPSDE(cov=IdentityCovariance((1, 2, 2)))
    i = torch.arange(N_STEPS)
    t = (i.double() + 0.5) / (N_STEPS - 1)
    t[-1] = 1.0
    assert torch.equal(sde.discrete_index(t), i)
    assert sde.discrete_index(torch.tensor([0.0, 0.999 / (N_STEPS - 1), 1.0])).tolist() == [0, 0, N_STEPS - 1]


@pytest.mark.parametrize("name", ["vp", "nivp"])
def test_discretize_is_the_ddpm_step(name):
    """f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i), beta_i linear from beta_min/N to beta_max/N (docs/math.md §2);
    iterating it reproduces q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) Sigma)."""
    shape = (1, 3, 4)
    sde, _ = make_case(name, shape)
    betas = np.linspace(BETA_MIN / N_STEPS, BETA_MAX / N_STEPS, N_STEPS)
    x = torch.randn((N_STEPS, *shape), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = (torch.arange(N_STEPS, dtype=torch.float64) + 0.5) / (N_STEPS - 1)
    f, G = sde.discretize(x, t)
    np.testing.assert_allclose(G.numpy() ** 2, betas, rtol=1e-12)
    np.testing.assert_allclose(f.numpy(), (np.sqrt(1 - betas) - 1)[:, None, None, None] * x.numpy(), rtol=1e-10)
    assert G[0].item() ** 2 == pytest.approx(1e-4) and G[-1].item() ** 2 == pytest.approx(0.02)
    # Mean coefficient c and noise variance v of x_i | x_0 along the chain x_{i+1} = x_i + f_i + G_i Sigma^{1/2} z.
    coeff = 1.0 + f.flatten(1)[:, 0] / x.flatten(1)[:, 0]
    c = torch.cumprod(coeff, 0)
    v = torch.zeros(())
    vs = []
    for k in range(N_STEPS):
        v = coeff[k] ** 2 * v + G[k] ** 2
        vs.append(v)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(c.numpy() ** 2, abar, rtol=1e-10)
    np.testing.assert_allclose(torch.stack(vs).numpy(), 1 - abar, rtol=1e-10)


@pytest.mark.parametrize("name", ["ve", "nive"])
def test_discretize_is_the_smld_step(name):
    """f = 0, G^2 = sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0), sigma_i geometric from sigma_min to sigma_max;
    the variances add up to sigma_i^2 (docs/math.md §4)."""
    shape = (1, 3, 4)
    sde, _ = make_case(name, shape)
    sigmas = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** (np.arange(N_STEPS) / (N_STEPS - 1))
    x = torch.randn((N_STEPS, *shape), dtype=torch.float64)
    t = (torch.arange(N_STEPS, dtype=torch.float64) + 0.5) / (N_STEPS - 1)
    f, G = sde.discretize(x, t)
    assert torch.equal(f, torch.zeros_like(x))
    np.testing.assert_allclose(G.numpy() ** 2, np.diff(sigmas**2, prepend=0.0), rtol=1e-9)
    np.testing.assert_allclose(torch.cumsum(G**2, 0).sqrt().numpy(), sigmas, rtol=1e-10)
    np.testing.assert_allclose(sde.discrete_sigmas.numpy(), sigmas, rtol=1e-12)


@pytest.mark.parametrize("name", ["subvp", "subvp-gff"])
def test_discretize_subvp_is_euler_maruyama(name):
    shape = (1, 3, 4)
    sde, cf = make_case(name, shape)
    x = torch.randn((3, *shape), dtype=torch.float64)
    ts = [0.1, 0.5, 0.9]
    f, G = sde.discretize(x, torch.tensor(ts, dtype=torch.float64))
    for b, tb in enumerate(ts):
        np.testing.assert_allclose(f[b].numpy(), cf.f(tb) * x[b].numpy() / N_STEPS, rtol=1e-12)
        assert G[b].item() == pytest.approx(math.sqrt(cf.g2(tb) / N_STEPS), rel=1e-12)


# ---- reverse SDE, probability flow, score / eps, Tweedie on Gaussian data -----------------------------------------

GAUSS_SHAPE = (2, 3, 4)


def gaussian_setup(name: str, seed: int = 5):
    """Gaussian data N(m, S) (dense S, generic: does not commute with Sigma), the SDE, and the exact score of p_t."""
    sde, cf = make_case(name, GAUSS_SHAPE, power=1.3)
    data = GaussianData.random(GAUSS_SHAPE, torch.Generator().manual_seed(seed))
    sigma = sde.cov.dense()

    def score_fn(x, tt):
        assert torch.all(tt == tt[0])
        return data.score(x, cf.a(tt[0].item()), math.sqrt(cf.var(tt[0].item())), sigma)

    return sde, cf, data, sigma, score_fn


def test_gaussian_data_does_not_commute_with_sigma():
    """The reverse-drift tests below would not see an operator applied in the wrong order if S commuted with Sigma."""
    _, _, data, sigma, _ = gaussian_setup("nivp")
    assert (data.cov @ sigma - sigma @ data.cov).abs().max().item() > 0.1


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_drift_matches_dense_algebra(name, probability_flow):
    """rsde.sde = (f - w g^2 Sigma s, g) with w = 1, and (f - g^2 Sigma s / 2, 0) for the probability flow; the same
    with sde.discretize's (f, G) for rsde.discretize. s = -(a^2 S + std^2 Sigma)^{-1}(x - a m)."""
    t = 0.37
    sde, cf, data, sigma, score_fn = gaussian_setup(name)
    rsde = sde.reverse(score_fn, probability_flow=probability_flow)
    assert rsde.N == sde.N and rsde.T == sde.T and rsde.cov is sde.cov
    x = torch.randn((3, *GAUSS_SHAPE), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    tt = batch_t(t, 3)
    sigma_s = (score_fn(x, tt).flatten(1) @ sigma).reshape(x.shape)  # Sigma symmetric
    w = 0.5 if probability_flow else 1.0
    drift, diffusion = rsde.sde(x, tt)
    np.testing.assert_allclose(drift.numpy(), (cf.f(t) * x - w * cf.g2(t) * sigma_s).numpy(), rtol=1e-10, atol=1e-12)
    expected_g = 0.0 if probability_flow else math.sqrt(cf.g2(t))
    np.testing.assert_allclose(diffusion.numpy(), expected_g, rtol=1e-12)
    f, G = sde.discretize(x, tt)
    rdrift, rdiff = rsde.discretize(x, tt)
    np.testing.assert_allclose(rdrift.numpy(), (f - w * G[:, None, None, None] ** 2 * sigma_s).numpy(), atol=1e-12)
    np.testing.assert_allclose(rdiff.numpy(), 0.0 if probability_flow else G.numpy(), atol=0)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_dynamics_transport_the_marginals(name, probability_flow):
    """The reverse drift moves p_t = N(a m, C_t), C_t = a^2 S + std^2 Sigma, the right way (a sign-independent check).

    The drift v(x) = J x + b is affine for Gaussian data. The probability-flow ODE carries N(a m, C_t) iff
    J C + C J^T = dC/dt and v(a m) = d(a m)/dt. The reverse SDE, run backwards in time with noise g Sigma^{1/2},
    does iff J C + C J^T - g^2 Sigma = dC/dt and v(a m) = d(a m)/dt. dC/dt and d(a m)/dt come from central
    differences of the closed forms (h = 1e-5: truncation ~ 1e-9 relative, round-off ~ 1e-11).
    """
    t, h = 0.37, 1e-5
    sde, cf, data, sigma, score_fn = gaussian_setup(name)
    rsde = sde.reverse(score_fn, probability_flow=probability_flow)
    D = sigma.shape[0]
    basis = torch.cat([torch.zeros(1, D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)])
    v = rsde.sde(basis.reshape(D + 1, *GAUSS_SHAPE), batch_t(t, D + 1))[0].flatten(1)
    J = (v[1:] - v[:1]).T  # column i = v(e_i) - v(0)

    def cov_t(s):
        return data.marginal_cov(cf.a(s), math.sqrt(cf.var(s)), sigma)

    C = cov_t(t)
    dC = (cov_t(t + h) - cov_t(t - h)) / (2 * h)
    lhs = J @ C + C @ J.T
    if not probability_flow:
        lhs = lhs - cf.g2(t) * sigma
    np.testing.assert_allclose(lhs.numpy(), dC.numpy(), rtol=0, atol=1e-6 * dC.abs().max().item())
    mean = cf.a(t) * data.mean
    dmean = (cf.a(t + h) - cf.a(t - h)) / (2 * h) * data.mean
    v_mean = rsde.sde(mean[None], batch_t(t, 1))[0][0]
    np.testing.assert_allclose(v_mean.numpy(), dmean.numpy(), rtol=0, atol=1e-6 * max(dmean.abs().max().item(), 1.0))


@pytest.mark.parametrize("name", CASES)
def test_score_eps_conversion(name):
    """eps = -std Sigma^{1/2} s and s = -Sigma^{-1/2} eps / std (dense sqrtm), inverse to each other, through the
    seam a network reaches the samplers by (samplers.ScoreModel with a "score" and an "eps" network)."""
    sde, cf = make_case(name, GAUSS_SHAPE, power=1.3)
    t = 0.42
    gen = torch.Generator().manual_seed(7)
    x, s, e = torch.randn((3, 4, *GAUSS_SHAPE), generator=gen, dtype=torch.float64)
    half = sqrtm_dense(sde.cov.dense())
    std = math.sqrt(cf.var(t))
    tt = batch_t(t, 4)
    np.testing.assert_allclose(sde.marginal_std(tt).numpy(), std, rtol=1e-12)

    def score_to_eps(score):
        return ScoreModel(sde, lambda y, u: score, "score").eps(x, tt)

    def eps_to_score(eps):
        return ScoreModel(sde, lambda y, u: eps, "eps")(x, tt)

    eps = score_to_eps(s)
    np.testing.assert_allclose(eps.flatten(1).numpy(), (-std * s.flatten(1) @ half).numpy(), atol=1e-12)
    score = eps_to_score(e)
    ref = -torch.linalg.solve(half, e.flatten(1).T).T / std
    np.testing.assert_allclose(score.flatten(1).numpy(), ref.numpy(), atol=1e-10)
    np.testing.assert_allclose(eps_to_score(eps).numpy(), s.numpy(), atol=1e-10)
    np.testing.assert_allclose(score_to_eps(score).numpy(), e.numpy(), atol=1e-10)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_denoise_is_gaussian_conditioning(name, t):
    """docs/math.md §8.10: Tweedie (x + std^2 Sigma s(x)) / a = c_x x + c_eps Sigma^{1/2} eps (sde.denoise_coefficients,
    eps = -std Sigma^{1/2} s) with the exact score equals Gaussian conditioning,
    E[x_0 | x_t] = m + a S C_t^-1 (x - a m), to 1e-10."""
    sde, cf, data, sigma, score_fn = gaussian_setup(name)
    a, std = cf.a(t), math.sqrt(cf.var(t))
    x0 = data.mean + (torch.randn(4, 24, dtype=torch.float64) @ sqrtm_dense(data.cov)).reshape(4, *GAUSS_SHAPE)
    xt = a * x0 + std * sde.cov.sqrt_mul(torch.randn(4, *GAUSS_SHAPE, dtype=torch.float64))
    tt = batch_t(t, 4)
    eps = -std * sde.cov.sqrt_mul(score_fn(xt, tt))
    c_x, c_eps = sde.denoise_coefficients(tt)
    out = c_x[:, None, None, None] * xt + c_eps[:, None, None, None] * sde.cov.sqrt_mul(eps)
    np.testing.assert_allclose(out.numpy(), data.posterior_mean(xt, a, std, sigma).numpy(), rtol=0, atol=1e-10)


# ---- the isotropic classes are the Sigma = I case; dtypes --------------------------------------------------------


@pytest.mark.parametrize(
    "iso, ni",
    [
        (lambda s: VPSDE(0.2, 15.0, 500, shape=s), lambda s: NIVPSDE(0.2, 15.0, 500, cov=IdentityCovariance(s))),
        (lambda s: SubVPSDE(0.2, 15.0, 500, shape=s), lambda s: SubVPSDE(0.2, 15.0, 500, cov=IdentityCovariance(s))),
        (lambda s: VESDE(0.02, 30.0, 500, shape=s), lambda s: NIVESDE(0.02, 30.0, 500, cov=IdentityCovariance(s))),
    ],
)
def test_identity_covariance_gives_exactly_the_isotropic_sde(iso, ni):
    shape = (2, 3, 5)
    a, b = iso(shape), ni(shape)
    gen = torch.Generator().manual_seed(8)
    x, s = torch.randn((2, 4, *shape), generator=gen)
    t = torch.rand(4, generator=gen)

    def score_fn(y, tt):
        return -y * tt[:, None, None, None]

    outputs = []
    for sde in (a, b):
        rev, pf = sde.reverse(score_fn), sde.reverse(score_fn, probability_flow=True)
        outputs.append(
            [
                *sde.sde(x, t),
                *sde.marginal_prob(x, t),
                *sde.discretize(x, t),
                sde.prior_logp(x),
                *sde.denoise_coefficients(t),
                sde.log_snr(t),
                *sde.spectral_scales(t),
                sde.to_spectral(s),
                *rev.sde(x, t),
                *rev.discretize(x, t),
                *pf.sde(x, t),
                *pf.discretize(x, t),
                sde.prior_sampling((4, *shape), generator=torch.Generator().manual_seed(9)),
            ]
        )
    for u, w in zip(*outputs, strict=True):
        assert torch.equal(u, w)


@pytest.mark.parametrize("name", CASES)
def test_float32_in_float32_out(name):
    shape = (1, 4, 6)
    sde, _ = make_case(name, shape)
    x64 = torch.randn((3, *shape), generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x = x64.float()
    t = torch.tensor([0.1, 0.5, 0.9])

    def score_fn(y, tt):
        return -y

    rev, pf = sde.reverse(score_fn), sde.reverse(score_fn, probability_flow=True)
    outs = [
        *sde.sde(x, t),
        *sde.marginal_prob(x, t),
        *sde.discretize(x, t),
        sde.prior_logp(x),
        *sde.denoise_coefficients(t),
        *sde.spectral_scales(t),
        sde.to_spectral(x),
        sde.from_spectral(x),
        *rev.sde(x, t),
        *rev.discretize(x, t),
        *pf.sde(x, t),
        *pf.discretize(x, t),
        sde.prior_sampling((2, *shape), dtype=torch.float32),
    ]
    assert all(o.dtype == torch.float32 for o in outs)
    np.testing.assert_allclose(sde.prior_logp(x).numpy(), sde.prior_logp(x64).numpy(), rtol=1e-5)
    np.testing.assert_allclose(sde.from_spectral(sde.to_spectral(x)).numpy(), x64.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(TypeError, match="cov"):
        NIVPSDE(0.1, 20.0, 1000)
    with pytest.raises(TypeError, match="cov"):
        NIVESDE(0.01, 50.0, 1000)
    with pytest.raises(ValueError, match="N"):
        VPSDE(N=0)
    with pytest.raises(ValueError, match="t"):
        VPSDE(shape=(1, 2, 2)).marginal_prob(torch.zeros(3, 1, 2, 2), torch.zeros(2))

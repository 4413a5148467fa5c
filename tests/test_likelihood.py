"""Probability-flow likelihood and bits/dim on data whose density is exact (docs/math.md §5, 5.1, 8.12, 8.14, 8.15).

With the exact score of p_t and the exact end-point density p_T as prior, the PF-ODE likelihood of x at time eps is
log p_eps(x); with eps = 1e-8 that is log p_0(x) to far below 1e-4 nats (p_eps = p_0 convolved with noise of
variance ~ beta_min eps Sigma = 1e-9 Sigma), so the closed form log N(x; m, S) (or the mixture density) is the target.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from sde_lib import NIVESDE, NIVPSDE, GFFCovariance, nats_to_bpd
from sde_lib import dequantize as dequantize_pixels
from tests.gaussian_oracle import SHAPE, GaussianMixture, oracle_sde

D = 64
F64 = torch.float64
TIGHT = {"rtol": 1e-7, "atol": 1e-7, "eps": 1e-8}
SOLVERS = ["rk45", "dopri5"]  # ours (samplers.rk45, the default) and torchdiffeq's


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(21))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["nivp", "vp", "nive", "subvp", "ve"])
def test_exact_likelihood_of_gaussian_data(cov, data, name, solver):
    """Exact divergence + exact end-point prior: log N(x; m, S) to 1e-4 nats (docs/math.md §8.12)."""
    sde = oracle_sde(name, cov)
    x = data.sample(4, torch.Generator().manual_seed(1))
    logp, z, nfe = samplers.log_likelihood(
        sde, data.score_fn(sde), x, prior_logp=data.end_logp(sde), solver=solver, **TIGHT
    )
    assert logp.dtype == F64 and z.shape == x.shape and nfe > 10
    torch.testing.assert_close(logp, data.log_prob(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_likelihood_of_a_gaussian_mixture(cov, solver):
    """A three-component mixture (a non-linear score): the mixture's log-density to 1e-4 nats."""
    gmm = GaussianMixture.mixture(SHAPE, torch.Generator().manual_seed(3))
    sde = NIVPSDE(cov=cov)
    x = gmm.sample(4, torch.Generator().manual_seed(4))
    logp, _, _ = samplers.log_likelihood(
        sde, gmm.score_fn(sde), x, prior_logp=gmm.end_logp(sde), solver=solver, **TIGHT
    )
    torch.testing.assert_close(logp, gmm.log_prob(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("divergence", ["exact", "rademacher"])
def test_rk45_agrees_with_torchdiffeq_dopri5(cov, divergence):
    """The same ODE, probe and tolerance 1e-9 by samplers.rk45 and torchdiffeq's dopri5: the same log-density
    and end point (a GMM score and, through the eps path, a small network)."""
    gmm = GaussianMixture.mixture(SHAPE, torch.Generator().manual_seed(17))
    sde = NIVPSDE(cov=cov)
    net = SmallEpsNet(seed=18)
    x = gmm.sample(3, torch.Generator().manual_seed(19))
    for score in (gmm.score_fn(sde), samplers.score_fn_from_eps(sde, lambda y, t: 0.1 * net(y, t))):
        out = {}
        for solver in SOLVERS:
            options = {"divergence": divergence, "generator": torch.Generator().manual_seed(20), "eps": 1e-3}
            out[solver] = samplers.log_likelihood(sde, score, x, rtol=1e-9, atol=1e-9, solver=solver, **options)
        torch.testing.assert_close(out["rk45"][0], out["dopri5"][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(out["rk45"][1], out["dopri5"][1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("name, bound", [("nivp", 0.1), ("vp", 0.1), ("nive", 0.1)])
def test_default_prior_difference_is_small(cov, data, name, bound):
    """With the SDE's own prior N(0, c^2 Sigma) instead of p_T, the mean difference over 16 samples is small
    (O(a(1)) for VP, O(|m|^2 / sigma_max^2) for VE); printed for the record (pytest -s)."""
    sde = oracle_sde(name, cov)
    x = data.sample(16, torch.Generator().manual_seed(5))
    logp, _, _ = samplers.log_likelihood(sde, data.score_fn(sde), x, rtol=1e-5, atol=1e-5, eps=1e-8)
    diff = logp - data.log_prob(x)
    print(f"{name}: default-prior difference mean {float(diff.mean()):+.4f}, max |.| {float(diff.abs().max()):.4f}")
    assert abs(float(diff.mean())) < bound


@pytest.mark.parametrize("divergence", ["rademacher", "gaussian"])
def test_hutchinson_agrees_within_three_standard_errors(cov, data, divergence):
    """256 probes of one x (one probe per copy, fixed along its solve): the mean is within 3 standard errors."""
    sde = NIVPSDE(cov=cov)
    x = data.sample(1, torch.Generator().manual_seed(6)).expand(256, *SHAPE).contiguous()
    logp, _, _ = samplers.log_likelihood(
        sde,
        data.score_fn(sde),
        x,
        divergence=divergence,
        prior_logp=data.end_logp(sde),
        generator=torch.Generator().manual_seed(7),
        rtol=1e-6,
        atol=1e-6,
        eps=1e-8,
    )
    exact = float(data.log_prob(x[:1]))
    se = float(logp.std()) / math.sqrt(logp.numel())
    assert float(logp.std()) > 0.1  # the probes differ
    assert abs(float(logp.mean()) - exact) < 3 * se, (float(logp.mean()), exact, se)


@pytest.mark.parametrize("levels", [256, 16])
@pytest.mark.parametrize("dequantize", [True, False])
def test_bits_per_dim_of_a_uniform_density(cov, levels, dequantize):
    """A model uniform on [-1, 1]^D (zero score under NI-VE: the flow is the identity, prior 2^-D) has
    bpd = log2(levels): 8 for 256 levels (docs/math.md §8.14)."""
    sde = NIVESDE(cov=cov)
    pixels = torch.randint(0, levels, (3, *SHAPE), generator=torch.Generator().manual_seed(8))

    def uniform(z):
        return torch.full((z.shape[0],), -D * math.log(2.0), dtype=z.dtype)

    bpd, nfe = samplers.bits_per_dim(
        sde,
        lambda x, t: torch.zeros_like(x),
        pixels,
        levels=levels,
        dequantize=dequantize,
        prior_logp=uniform,
        generator=torch.Generator().manual_seed(9),
        dtype=F64,
    )
    torch.testing.assert_close(bpd, torch.full((3,), math.log2(levels), dtype=F64), rtol=0, atol=1e-12)
    assert nfe > 0


def test_bits_per_dim_dequantises_with_the_generator(cov, data):
    """bpd = -log p(y) / (D ln 2) + 7 with y = (n + u)/128 - 1, u drawn first from the generator (docs/math.md §5)."""
    sde = NIVPSDE(cov=cov)
    pixels = torch.randint(100, 156, (2, *SHAPE), generator=torch.Generator().manual_seed(10))
    options = {"prior_logp": data.end_logp(sde), **TIGHT}
    bpd, _ = samplers.bits_per_dim(
        sde, data.score_fn(sde), pixels, generator=torch.Generator().manual_seed(11), dtype=F64, **options
    )
    u = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    y = dequantize_pixels(pixels, 256, u)
    expected = nats_to_bpd(data.log_prob(y), D, 256)
    torch.testing.assert_close(bpd, expected, rtol=0, atol=1e-4 / (D * math.log(2)))
    centre, _ = samplers.bits_per_dim(sde, data.score_fn(sde), pixels, dequantize=False, dtype=F64, **options)
    expected = nats_to_bpd(data.log_prob(dequantize_pixels(pixels, 256, torch.full(pixels.shape, 0.5, dtype=F64))), D)
    torch.testing.assert_close(centre, expected, rtol=0, atol=1e-4 / (D * math.log(2)))


class SmallEpsNet(torch.nn.Module):
    """A small random eps-network: an MLP of (x, t) with a tanh hidden layer (any score model will do)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(D + 1, 96), torch.nn.Tanh(), torch.nn.Linear(96, D)).double()

    def forward(self, x, t):
        return self.net(torch.cat([x.flatten(1), t[:, None]], dim=1)).reshape(x.shape)


@pytest.mark.parametrize("pair", [("nivp", "vp"), ("nive", "ve")])
def test_whitening_equivalence(cov, pair):
    """log p^X(x) = log p^Y(Sigma^{-1/2} x) - 1/2 log det Sigma, where p^X uses the non-isotropic SDE with
    eps_theta and p^Y the isotropic one with eps_theta(Sigma^{1/2} y, t), to solver tolerance
    (docs/math.md §5.1, 8.15)."""
    net = SmallEpsNet(seed=12)
    sde_x, sde_y = oracle_sde(pair[0], cov), oracle_sde(pair[1], cov)
    score_x = samplers.score_fn_from_eps(sde_x, net)
    score_y = samplers.score_fn_from_eps(sde_y, lambda y, t: net(cov.sqrt_mul(y), t))
    x = 0.5 * torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(13), dtype=F64)
    with torch.no_grad():
        logp_x, z_x, _ = samplers.log_likelihood(sde_x, score_x, x, rtol=1e-7, atol=1e-7)
        logp_y, z_y, _ = samplers.log_likelihood(sde_y, score_y, cov.inv_sqrt_mul(x), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(logp_x, logp_y - 0.5 * cov.logdet(), rtol=0, atol=1e-5)
    torch.testing.assert_close(cov.sqrt_mul(z_y), z_x, rtol=0, atol=1e-5)  # trajectories map by Sigma^{1/2}


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_matches_float64(cov, data, solver):
    sde = NIVPSDE(cov=cov)
    x = data.sample(3, torch.Generator().manual_seed(14))
    ref, _, _ = samplers.log_likelihood(sde, data.score_fn(sde), x, solver=solver)
    logp, z, _ = samplers.log_likelihood(sde, data.score_fn(sde), x.float(), solver=solver)
    assert logp.dtype == torch.float32 and z.dtype == torch.float32
    torch.testing.assert_close(logp.double(), ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize("divergence", ["exact", "rademacher"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_model_is_only_evaluated_inside_eps_to_T_and_nfe_counts_calls(cov, data, solver, divergence):
    sde = NIVPSDE(cov=cov)
    score = data.score_fn(sde)
    seen = []

    def recording(x, t):
        seen.append(t.detach())
        return score(x, t)

    x = data.sample(2, torch.Generator().manual_seed(15))
    options = {"divergence": divergence, "generator": torch.Generator().manual_seed(0)}
    _, _, nfe = samplers.log_likelihood(sde, recording, x, eps=1e-3, solver=solver, **options)
    times = torch.cat(seen)
    assert nfe == len(seen) and times.min() >= 1e-3 and times.max() <= 1.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_non_finite_state_raises(cov, data, solver):
    """A model that returns NaN after t = 0.3: FloatingPointError naming the time, from either solver."""
    sde = NIVPSDE(cov=cov)
    score = data.score_fn(sde)

    def breaks(x, t):
        return score(x, t) * torch.where(t > 0.3, math.nan, 1.0)[:, None, None, None]

    x = data.sample(2, torch.Generator().manual_seed(21))
    with pytest.raises(FloatingPointError, match="non-finite"):
        samplers.log_likelihood(sde, breaks, x, divergence="rademacher", solver=solver, generator=torch.Generator())


def test_likelihood_argument_errors(cov, data):
    sde = NIVPSDE(cov=cov)
    x = data.sample(2, torch.Generator().manual_seed(16))
    score = data.score_fn(sde)
    with pytest.raises(ValueError, match="divergence"):
        samplers.log_likelihood(sde, score, x, divergence="trace")
    with pytest.raises(ValueError, match="adaptive"):
        samplers.log_likelihood(sde, score, x, solver="rk4")
    with pytest.raises(ValueError, match="'rk45'"):
        samplers.log_likelihood(sde, score, x, solver="RK45")
    with pytest.raises(ValueError, match="eps"):
        samplers.log_likelihood(sde, score, x, eps=1.5)
    with pytest.raises(ValueError, match="x must be"):
        samplers.log_likelihood(sde, score, x[0])
    singular = NIVPSDE(cov=GFFCovariance(SHAPE, dc="zero"))
    with pytest.raises(ValueError, match="singular"):
        samplers.log_likelihood(singular, score, x)
    with pytest.raises(ValueError, match="images_uint8"):
        samplers.bits_per_dim(sde, score, x[0])


def test_likelihood_runs_with_tf32_off_and_restores_the_setting(cov, data, monkeypatch):
    """TF32 products would change a float32 likelihood's steps on a GPU: off inside, the caller's setting after."""
    seen = []
    sde = NIVPSDE(cov=cov)
    score = data.score_fn(sde)

    def recording(x, t):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return score(x, t)

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    samplers.log_likelihood(sde, recording, data.sample(2, torch.Generator().manual_seed(0)), rtol=1e-3, atol=1e-3)
    assert seen and set(seen) == {(False, False)}
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32

"""The one seam between a trained network and the samplers (samplers.ScoreModel) and the SDE interface the samplers
ask instead of testing classes (docs/math.md §2-5).

* Exact plumbing: a network trained at the sampler's own noise scale reaches it unconverted, so score_fn_for(net,
  sde, loss) and score_fn_from_eps(sde, net) give the same samples to rounding (float64, same generator).
* Every prediction kind (eps, x0, v, u, score) of the same denoiser gives the same score and the same samples;
  v against a dense reference v = (a^2 I + s^2 Sigma)^{-1/2} (a eps - s Sigma^{1/2} x0).
* An SDE defined here, outside sde_lib (VP with a cosine schedule), runs every continuous sampler and the likelihood
  with no change to samplers/.
* Counting: one step of each method applies Sigma^{1/2} or its inverse no more often than its formula needs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor

import samplers
from samplers import ScoreModel, score_fn_from_eps
from sde_lib import NIVESDE, NIVPSDE, SDE, VPSDE, GFFCovariance, eps_from_prediction
from tests.gaussian_oracle import SHAPE, GaussianMixture, gff_cov, moment_statistics
from training.losses import DSMLoss, NIDDPMLoss, score_fn_for

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_eps_net(x: Tensor, t: Tensor) -> Tensor:
    """A fixed smooth white-noise predictor, non-linear in x and t (stands in for a trained network)."""
    return 0.3 * torch.tanh(x) * (1 + t[:, None, None, None]) + 0.1 * torch.roll(x, 1, dims=-1)


def draw(sde, score_fn, method: str, steps: int | None, n: int = 3, seed: int = 5, **options) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return samplers.sample(sde, score_fn, (n, *SHAPE), method, steps, gen, dtype=F64, **options)[0]


def relative_difference(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


SDES = {"nivp": lambda: NIVPSDE(cov=gff_cov()), "vp": lambda: VPSDE(shape=SHAPE)}


# ---- exact plumbing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [1000, 100, 10])
def test_ddpm_network_reaches_the_discrete_samplers_unconverted(sde_name, method, steps):
    """NI-DDPM / NI-DDIM work at sqrt(1 - abar_i), the scale the "ddpm" loss trains at: no conversion."""
    sde = SDES[sde_name]()
    a = draw(sde, score_fn_for(smooth_eps_net, sde, "ddpm"), method, steps)
    b = draw(sde, score_fn_from_eps(sde, smooth_eps_net), method, steps)
    assert relative_difference(a, b) <= 1e-6


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize(
    "method, steps, options",
    [
        ("pc", 100, {}),
        ("pc", 100, {"corrector": "langevin"}),
        ("pc", 1000, {"predictor": "reverse_diffusion", "eps": 1e-3}),
        ("pc", 1000, {"predictor": "ancestral"}),
        ("ode", 20, {"solver": "rk4"}),
        ("ode", None, {"rtol": 1e-4, "atol": 1e-4}),
        ("dpm2m", 10, {}),
        ("unipc", 10, {}),
    ],
)
def test_dsm_network_reaches_the_continuous_samplers_unconverted(sde_name, method, steps, options):
    """Continuous samplers work at the marginal std(t), the scale the "dsm" loss trains at."""
    sde = SDES[sde_name]()
    a = draw(sde, score_fn_for(smooth_eps_net, sde, "dsm"), method, steps, **options)
    b = draw(sde, score_fn_from_eps(sde, smooth_eps_net), method, steps, **options)
    assert relative_difference(a, b) <= 1e-6


def test_a_network_read_at_another_scale_goes_through_its_score():
    """A "dsm" network under NI-DDPM: eps' = -s' Sigma^{1/2} score = (s' / std) eps, the same samples as sampling
    its score; and it is not the raw network (sqrt(1 - abar_i) != std(t_i): 4.9% at the first level)."""
    sde = SDES["nivp"]()
    model = score_fn_for(smooth_eps_net, sde, "dsm")
    a = draw(sde, model, "ddpm", 100)
    b = draw(sde, lambda x, t: model(x, t), "ddpm", 100)  # a plain score function: eps' = -s' Sigma^{1/2} score
    assert relative_difference(a, b) <= 1e-10
    c = draw(sde, score_fn_from_eps(sde, smooth_eps_net), "ddpm", 100)
    assert relative_difference(a, c) > 1e-4
    t = torch.full((2,), float(sde.discrete_time(0)), dtype=F64)
    assert abs(float(sde.discrete_marginal(t)[1][0] / sde.marginal_std(t)[0]) - 1) > 0.04


# ---- every prediction kind ----------------------------------------------------------------------------------------


def sqrtm(m: np.ndarray) -> np.ndarray:
    return np.real(scipy.linalg.sqrtm(m))


def _as(prediction: str, sde: SDE, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """The output a `prediction` network gives for the same denoiser as eps (dense matrices, x = a x0 + s S^1/2 eps)."""
    a, s = (v[:, None] for v in sde.marginal(t))
    half = torch.from_numpy(sqrtm(sde.cov.dense().numpy()))
    xf, ef = x.flatten(1), eps.flatten(1)
    x0 = (xf - s * ef @ half) / a
    if prediction == "eps":
        out = ef
    elif prediction == "x0":
        out = x0
    elif prediction == "u":
        out = -torch.linalg.solve(half, ef.T).T
    elif prediction == "score":
        out = -torch.linalg.solve(half, ef.T).T / s
    else:  # v = (a^2 I + s^2 Sigma)^{-1/2} (a eps - s Sigma^{1/2} x0), per sample
        sigma = sde.cov.dense().numpy()
        rows = []
        for i in range(x.shape[0]):
            c = sqrtm(float(a[i]) ** 2 * np.eye(sigma.shape[0]) + float(s[i]) ** 2 * sigma)
            rows.append(np.linalg.solve(c, (a[i] * ef[i] - s[i] * x0[i] @ half).numpy()))
        out = torch.from_numpy(np.stack(rows))
    return out.reshape(x.shape)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "u", "score"])
def test_every_prediction_kind_gives_the_same_score_and_samples(sde_name, prediction):
    sde = SDES[sde_name]()

    def net(x, t):
        return _as(prediction, sde, x, t, smooth_eps_net(x, t))

    model = ScoreModel(sde, net, prediction)
    reference = score_fn_from_eps(sde, smooth_eps_net)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor([0.02, 0.3, 0.6, 0.97], dtype=F64)
    torch.testing.assert_close(model(x, t), reference(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.eps(x, t), smooth_eps_net(x, t), rtol=1e-9, atol=1e-9)
    a, b = draw(sde, model, "dpm2m", 10), draw(sde, reference, "dpm2m", 10)
    assert relative_difference(a, b) <= 1e-8


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_losses_train_any_prediction_on_the_same_eps_objective(prediction):
    """The loss of an x0 / v network equals the eps loss of the same denoiser (the objective is in eps)."""
    sde = SDES["nivp"]()
    x0 = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=F64)
    for loss_eps, loss_other in ((DSMLoss(), DSMLoss(prediction=prediction)), (NIDDPMLoss(), NIDDPMLoss(prediction))):
        scale = loss_eps.scale(sde)

        def net(x, t, scale=scale):
            a, s = scale(t)
            eps = smooth_eps_net(x, t)
            xa = (x - s[:, None, None, None] * sde.cov.sqrt_mul(eps)) / a[:, None, None, None]
            if prediction == "x0":
                return xa
            a_k, s_k = a[:, None, None, None], s[:, None, None, None] * sde.cov.basis_eigenvalues(F64).sqrt()
            v = (a_k * sde.cov.to_basis(eps) - s_k * sde.cov.to_basis(xa)) / (a_k**2 + s_k**2).sqrt()
            return sde.cov.from_basis(v)

        expected = loss_eps(smooth_eps_net, sde, x0, seed=3)
        torch.testing.assert_close(loss_other(net, sde, x0, seed=3), expected, rtol=1e-10, atol=0)


def test_v_of_white_noise_vp_is_the_usual_v():
    """Sigma = I and a^2 + s^2 = 1: v = a eps - s x0, so eps = s x + a v."""
    x, v = torch.randn(2, 3, *SHAPE, dtype=F64)
    a, s = torch.tensor([0.6, 0.8, 0.28], dtype=F64), torch.tensor([0.8, 0.6, 0.96], dtype=F64)
    eps = eps_from_prediction("v", v, x, a, s, VPSDE(shape=SHAPE).cov)
    torch.testing.assert_close(eps, s[:, None, None, None] * x + a[:, None, None, None] * v, rtol=1e-12, atol=1e-12)


# ---- an SDE defined outside sde_lib ------------------------------------------------------------------------------


class CosineVPSDE(SDE):
    """VP with the cosine schedule (Nichol & Dhariwal 2021), a(t) = cos(pi/2 (t + c) / (1 + c)) / cos(pi/2 c / (1 + c)),
    std = sqrt(1 - a^2), dx = -1/2 beta x dt + sqrt(beta) Sigma^{1/2} dw with beta = -2 d log a / dt. T = 0.99 keeps
    a(T) > 0."""

    c = 0.008

    def __init__(self, cov, N: int = 1000):
        super().__init__(N, cov)

    @property
    def T(self) -> float:
        return 0.99

    def _angle(self, t: Tensor) -> Tensor:
        return math.pi / 2 * (t + self.c) / (1 + self.c)

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.cos(self._angle(t)) / math.cos(math.pi / 2 * self.c / (1 + self.c))

    def marginal_std(self, t: Tensor) -> Tensor:
        return torch.sqrt(1 - self.mean_coeff(t) ** 2)

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = math.pi / (1 + self.c) * torch.tan(self._angle(t))
        return -0.5 * beta[:, None, None, None] * x, torch.sqrt(beta)


@pytest.fixture(scope="module")
def cosine():
    return CosineVPSDE(gff_cov()), GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(11))


@pytest.mark.parametrize(
    "method, steps, options, n, kl_allowance",
    [
        ("pc", 500, {}, 1000, 0.01),
        ("pc", 500, {"corrector": "langevin", "snr": 0.05}, 1000, 0.02),
        ("ode", None, {}, 1000, 0.01),
        ("dpm2m", 20, {}, 1000, 0.06),
        ("dpm2m", 10, {}, 1000, 0.06),  # KL excess +0.028 with 20000 samples
        ("unipc", 10, {}, 1000, 0.035),  # +0.016
    ],
)
def test_an_sde_defined_outside_sde_lib_runs_every_continuous_sampler(cosine, method, steps, options, n, kl_allowance):
    """Samples of N(m, S) through a new SDE: KL of the fit within 4 null standard deviations plus an allowance."""
    sde, data = cosine
    x = draw(sde, data.score_fn(sde), method, steps, n=n, seed=0, **options)
    stats = moment_statistics(x, data.means[0], data.covs[0])
    assert stats["kl_excess"] < 4 * stats["kl_sd"] + kl_allowance, stats


def test_an_sde_defined_outside_sde_lib_has_exact_likelihoods(cosine):
    sde, data = cosine
    x = data.sample(3, torch.Generator().manual_seed(1))
    logp, _, _ = samplers.log_likelihood(
        sde, data.score_fn(sde), x, prior_logp=data.end_logp(sde), rtol=1e-7, atol=1e-7, eps=1e-8
    )
    torch.testing.assert_close(logp, data.log_prob(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "als", "cas"])
def test_discrete_methods_are_refused_by_asking_the_sde(cosine, method):
    sde, data = cosine
    with pytest.raises(ValueError, match=f"method '{method}' does not apply to CosineVPSDE"):
        draw(sde, data.score_fn(sde), method, 10)
    with pytest.raises(ValueError, match="does not apply to CosineVPSDE"):
        draw(sde, data.score_fn(sde), "pc", sde.N, predictor="ancestral", eps=sde.T / sde.N)


# ---- counting Sigma^{1/2} applications ---------------------------------------------------------------------------


class CountingGFF(GFFCovariance):
    """GFF noise that counts its applications of Sigma^a (one FFT pair each) and of its Hartley basis (one FFT
    each: the per-coefficient samplers move a state in and out of the basis)."""

    calls = 0

    def _power(self, x: Tensor, a: float) -> Tensor:
        CountingGFF.calls += 1
        return super()._power(x, a)

    def to_basis(self, x: Tensor) -> Tensor:
        CountingGFF.calls += 1
        return super().to_basis(x)


def _count(run) -> int:
    CountingGFF.calls = 0
    run()
    return CountingGFF.calls


def white_score(x: Tensor, t: Tensor) -> Tensor:
    return -x  # a score that applies no covariance itself


# method, sde, network as given to the sampler, options, applications per step (per model evaluation for ode)
COUNT_CASES = {
    "ddpm, ddpm network": ("nivp", "ddpm", {}, 1),
    "ddim, ddpm network": ("nivp", "ddim", {}, 1),
    "ddpm, plain score": ("nivp", "score", {"method": "ddpm"}, 2),
    "pc euler_maruyama, dsm network": ("nivp", "dsm", {"method": "pc"}, 1),
    "pc + langevin, dsm network": ("nivp", "dsm", {"method": "pc", "corrector": "langevin"}, 2),
    "pc ancestral, dsm network": ("nivp", "dsm", {"method": "pc", "predictor": "ancestral"}, 1),
    "pc euler_maruyama, plain score": ("nivp", "score", {"method": "pc"}, 2),
    "ode rk4 (4 evaluations a step), dsm network": ("nivp", "dsm", {"method": "ode", "solver": "rk4"}, 4),
    "dpm2m (eps into the basis, the state out of it), dsm network": ("nivp", "dsm", {"method": "dpm2m"}, 2),
    "unipc (predictor + corrector in one update), dsm network": ("nivp", "dsm", {"method": "unipc"}, 1),
    "unipc, plain score": ("nivp", "score", {"method": "unipc"}, 2),
    "unipc on NI-VE, dsm network": ("nive", "dsm", {"method": "unipc"}, 1),
    "als (3 updates a level), dsm network": ("nive", "dsm", {"method": "als", "n_steps_each": 3}, 3),
    "cas, dsm network": ("nive", "dsm", {"method": "cas", "eps_step": 0.9e-4}, 1),
}


@pytest.mark.parametrize("case", list(COUNT_CASES))
def test_each_step_applies_sigma_as_often_as_its_formula_needs(case):
    """Applications of Sigma^a per step, from two runs that differ by one step (one apply per fused update; a plain
    score costs one more, for eps = -std Sigma^{1/2} score)."""
    sde_name, network, args, per_step = COUNT_CASES[case]
    args = dict(args)
    method = args.pop("method", network if network in ("ddpm", "ddim") else None)
    cov = CountingGFF(SHAPE)
    sde = NIVPSDE(cov=cov) if sde_name == "nivp" else NIVESDE(sigma_max=5.0, cov=cov)
    loss = "ddpm" if network in ("ddpm", "ddim") else "dsm"
    model = white_score if network == "score" else score_fn_for(smooth_eps_net, sde, loss)
    pc_discrete = args.get("predictor") == "ancestral"
    if pc_discrete:  # one discrete level per step: compare N = 10 and N = 11
        counts = []
        for N in (30, 31):
            sde_n = NIVPSDE(N=N, cov=cov)
            m = score_fn_for(smooth_eps_net, sde_n, loss)
            counts.append(_count(lambda s=sde_n, m=m, N=N: draw(s, m, "pc", N, eps=1 / N, **args)))
    else:
        counts = [_count(lambda k=k: draw(sde, model, method, k, **args)) for k in (10, 11)]
    assert counts[1] - counts[0] == per_step, counts


@pytest.mark.parametrize("solver", ["rk45", "dopri5"])
def test_likelihood_applies_sigma_once_per_evaluation(solver):
    """The probability-flow drift of a "dsm" network: one fused update per evaluation (the divergence's backward
    pass goes through autograd, not through another application; Hutchinson's M v = Sigma^{1/2} v once per solve)."""
    cov = CountingGFF(SHAPE)
    sde = NIVPSDE(cov=cov)
    model = score_fn_for(smooth_eps_net, sde, "dsm")
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=F64)
    CountingGFF.calls = 0
    _, _, nfe = samplers.log_likelihood(
        sde, model, x, divergence="rademacher", generator=torch.Generator(), solver=solver
    )
    prior, probe = 1, 1  # sde.prior_logp applies Sigma^{-1/2} once; the probe's Sigma^{1/2} v once per solve
    assert CountingGFF.calls == nfe + prior + probe

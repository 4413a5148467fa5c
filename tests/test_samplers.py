"""Samplers on data whose score is exact (docs/math.md §2-4, 8.11), and the sampling API (issue 4).

Data: N(m, S) on 1x8x8 (D = 64) with a dense random S that does not commute with the GFF Sigma (power 1), and a
three-component Gaussian mixture; the score of every marginal is analytic (tests/gaussian_oracle.py), so a sampler's
only errors are Monte-Carlo noise and its own discretisation.

Tolerances. For n samples, `moment_statistics` gives two statistics with known exact-sampling laws:
* the KL of the fitted Gaussian to N(m, S) minus its exact-sampling mean (sd kl_sd ~ sqrt(2 k) / 2n with
  k = D + D (D+1)/2 = 2144): any error in m or S raises it;
* the whitened variance ratio tr(S^-1 S_hat)/D - (n-1)/n (sd var_sd = sqrt(2 D (n-1)) / nD): a scale error of S.
Each must lie within 4 of its standard deviations plus the method's discretisation allowance: about twice the bias
measured with 20000 samples by `python -m benchmarks.sampler_quality --gaussian` (benchmarks/RESULTS.md), never
less than twice that run's standard deviation. 1000-step stochastic samplers use n = 1000 (CI time: every step
draws 64k normals); their 4 kl_sd = 0.13 nats, while dropping Sigma^{1/2} from eps costs tens of nats (tested).
"""

from __future__ import annotations

import math

import pytest
import torch

import kernels
import samplers
from samplers import ScoreModel
from sde_lib import NIVPSDE, VPSDE, GFFCovariance
from tests.gaussian_oracle import SHAPE, GaussianMixture, gff_cov, moment_statistics, oracle_sde

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_problem() -> tuple[GaussianMixture, dict]:
    """The Gaussian data and the SDEs of the tests (also used by python -m benchmarks.sampler_quality --gaussian)."""
    cov = gff_cov()
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(7))
    sdes = {name: oracle_sde(name, cov) for name in ("nivp", "vp", "subvp", "nive", "ve")}
    sdes["vp200"] = oracle_sde("vp", cov, N=200)
    sdes["nive200"] = oracle_sde("nive", cov, N=200)
    return data, sdes


# name: (SDE, sample() arguments, samples, KL allowance, variance-ratio allowance); allowances = 2 x the bias
# measured with 20000 samples (at least 2 x its standard deviation), see the module docstring
ACCURACY_CASES = {
    "pc-1000": ("nivp", {"method": "pc", "steps": 1000}, 1000, 0.004, 0.005),
    "ode": ("nivp", {"method": "ode"}, 4000, 0.004, 0.003),
    "ddpm-1000": ("nivp", {"method": "ddpm", "steps": 1000}, 1000, 0.005, 0.021),
    "ddim-100": ("nivp", {"method": "ddim", "steps": 100}, 4000, 0.048, 0.073),
    "dpm2m-20": ("nivp", {"method": "dpm2m", "steps": 20}, 4000, 0.006, 0.031),
    "dpm2m-10": ("nivp", {"method": "dpm2m", "steps": 10}, 4000, 0.044, 0.073),
    "ode-vp": ("vp", {"method": "ode"}, 2000, 0.004, 0.003),
    "ode-subvp": ("subvp", {"method": "ode"}, 2000, 0.004, 0.003),
    "ode-nive": ("nive", {"method": "ode"}, 2000, 0.016, 0.003),
    "ode-ve": ("ve", {"method": "ode"}, 2000, 0.005, 0.003),
    "dpm2m-20-subvp": ("subvp", {"method": "dpm2m", "steps": 20}, 2000, 0.029, 0.061),
    "dpm2m-20-nive": ("nive", {"method": "dpm2m", "steps": 20}, 2000, 0.022, 0.028),
    "unipc-10": ("nivp", {"method": "unipc", "steps": 10}, 4000, 0.013, 0.038),
    "unipc-10-vp": ("vp", {"method": "unipc", "steps": 10}, 2000, 0.0032, 0.020),
    "unipc-10-nive": ("nive", {"method": "unipc", "steps": 10}, 2000, 0.033, 0.040),
    "unipc-10-subvp": ("subvp", {"method": "unipc", "steps": 10}, 2000, 0.16, 0.139),
    "pc-ancestral-langevin-vp200": (
        "vp200",
        {"method": "pc", "steps": 200, "predictor": "ancestral", "corrector": "langevin", "snr": 0.05},
        1000,
        0.012,
        0.026,
    ),
    "pc-rd-ald-nive200": (
        "nive200",
        {"method": "pc", "steps": 200, "predictor": "reverse_diffusion", "corrector": "ald", "snr": 0.05},
        1000,
        0.058,
        0.086,
    ),
    "pc-200-subvp": ("subvp", {"method": "pc", "steps": 200}, 1000, 0.004, 0.012),
    "als-nive": ("nive", {"method": "als", "steps": 100, "n_steps_each": 3, "eps_step": 3e-5}, 1000, 0.43, 0.25),
    "cas-nive": ("nive", {"method": "cas", "steps": 200}, 1000, 0.025, 0.059),
}


@pytest.fixture(scope="module")
def problem():
    return gaussian_problem()


def draw(sde, score_fn, n: int, seed: int = 0, **args):
    return samplers.sample(sde, score_fn, (n, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=F64, **args)


def test_data_covariance_does_not_commute_with_sigma(problem):
    data, sdes = problem
    S, sigma = data.covs[0], sdes["nivp"].cov.dense(F64)
    assert (S @ sigma - sigma @ S).norm() > 0.1 * (S @ sigma).norm()


@pytest.mark.parametrize("name", list(ACCURACY_CASES))
def test_sampler_reproduces_gaussian_data(problem, name):
    """m and S within Monte-Carlo error plus the measured discretisation allowance (module docstring)."""
    data, sdes = problem
    sde_name, args, n, kl_allow, var_allow = ACCURACY_CASES[name]
    sde = sdes[sde_name]
    x, nfe = draw(sde, data.score_fn(sde), n, **args)
    stats = moment_statistics(x, data.means[0], data.covs[0])
    report = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
    assert stats["kl_excess"] <= 4 * stats["kl_sd"] + kl_allow, report
    assert abs(stats["var_excess"]) <= 4 * stats["var_sd"] + var_allow, report


@pytest.mark.parametrize("name", ["ddim-100", "dpm2m-20", "unipc-10", "ode", "pc-ancestral-langevin-vp200"])
def test_sampler_leaving_sigma_half_off_eps_fails(problem, name):
    """x_next = c_x x + c_eps eps + c_z Sigma^{1/2} z (Sigma^{1/2} left off eps) violates the tolerances by far.

    The samplers apply Sigma^{1/2}(c_eps eps); a score Sigma^{-1/2} s has eps' = Sigma^{-1/2} eps, so feeding it
    reproduces exactly the update of a sampler that leaves Sigma^{1/2} off the true eps.
    """
    data, sdes = problem
    sde_name, args, _, kl_allow, var_allow = ACCURACY_CASES[name]
    sde = sdes[sde_name]
    if sde_name == "vp200":  # Sigma = I: the same test on the GFF twin of this SDE
        sde = NIVPSDE(N=200, cov=sdes["nivp"].cov)
    score = data.score_fn(sde)
    x, _ = draw(sde, lambda x, t: sde.cov.inv_sqrt_mul(score(x, t)), 1000, **args)
    stats = moment_statistics(x, data.means[0], data.covs[0])
    assert stats["kl_excess"] > 10 * (4 * stats["kl_sd"] + kl_allow), stats


def test_mixture_sampling_matches_exact_sampling():
    """A 3-component mixture: dpm2m(20), unipc(10) and ode reach the exact-sampling fit error
    (GaussianMixture.fit_error); unipc's excess was 0.041 with these samples."""
    cov = GFFCovariance(SHAPE, power=1.0)
    gmm = GaussianMixture.mixture(SHAPE, torch.Generator().manual_seed(11))
    sde = NIVPSDE(cov=cov)
    n = 3000
    null_mean, null_sd = gmm.fit_error_null(n, replicates=8)
    fast = (({"method": "dpm2m", "steps": 20}, 0.1), ({"method": "unipc", "steps": 10}, 0.1))
    for args, allowance in fast + (({"method": "ode"}, 0.02),):
        x, _ = draw(sde, gmm.score_fn(sde), n, **args)
        excess = gmm.fit_error(x) - null_mean
        assert excess <= 4 * null_sd + allowance, (args, excess, null_sd)


# ---- the API: reproducibility, NFE, time range, dtype, progress -------------------------------------------


def test_same_seed_same_samples_and_per_sample_noise(problem):
    data, sdes = problem
    sde = sdes["nivp"]
    score = data.score_fn(sde)
    a, _ = draw(sde, score, 7, seed=3, method="ddpm", steps=20)
    b, _ = draw(sde, score, 7, seed=3, method="ddpm", steps=20)
    c, _ = draw(sde, score, 1, seed=3, method="ddpm", steps=20)
    d, _ = draw(sde, score, 7, seed=4, method="ddpm", steps=20)
    assert torch.equal(a, b)
    torch.testing.assert_close(c[0], a[0], rtol=0, atol=1e-12)  # sample 0 does not depend on the batch size
    assert (a - d).abs().min() > 0


def test_isotropic_limit_reproduces_ddpm_exactly():
    """GFF with power 0 is Sigma = I: NI-DDPM then equals DDPM for the same random stream (docs/math.md §8.7)."""
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(5))
    flat = NIVPSDE(cov=GFFCovariance(SHAPE, power=0.0))
    iso = VPSDE(shape=SHAPE)
    for args in ({"method": "ddpm", "steps": 50}, {"method": "pc", "steps": 50, "corrector": "langevin"}):
        a, _ = draw(flat, data.score_fn(flat), 16, **args)
        b, _ = draw(iso, data.score_fn(iso), 16, **args)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


METHOD_CASES = [
    ("nivp", {"method": "pc", "steps": 30, "corrector": "langevin", "n_corrector": 2}, 90),
    ("nivp", {"method": "pc", "steps": 30, "predictor": "none", "corrector": "ald"}, 30),
    ("nivp", {"method": "ode"}, None),
    ("nivp", {"method": "ode", "solver": "rk4", "steps": 5}, 21),
    ("nivp", {"method": "ddpm", "steps": 30, "var": "beta"}, 30),
    ("nivp", {"method": "ddim", "steps": 30, "eta": 0.5}, 30),
    ("nivp", {"method": "dpm2m", "steps": 12, "denoise": False}, 12),
    ("subvp", {"method": "dpm2m", "steps": 12, "schedule": "time"}, 12),
    ("nivp", {"method": "dpm2m", "steps": 12, "schedule": "signal"}, 12),
    ("nive", {"method": "unipc", "steps": 7, "denoise": False}, 7),
    ("vp", {"method": "unipc", "steps": 9, "order": 2, "schedule": "logsnr"}, 9),
    ("subvp", {"method": "unipc", "corrector": "none", "schedule": "time"}, 10),
    ("nive", {"method": "als", "steps": 10, "n_steps_each": 3}, 31),
    ("nive", {"method": "cas", "steps": 200, "harmonic_mean": True}, 200),
    ("ve", {"method": "ode", "eps": 1e-2}, None),
    ("nive", {"method": "pc", "steps": 40}, 40),
]


@pytest.mark.parametrize("sde_name, args, expected_nfe", METHOD_CASES)
def test_nfe_counts_and_times_stay_in_range(problem, sde_name, args, expected_nfe):
    """nfe equals the score calls, and score_fn only ever sees t in [eps, T] (adaptive solvers included)."""
    data, sdes = problem
    sde = sdes[sde_name]
    score = data.score_fn(sde)
    seen: list[torch.Tensor] = []

    def recording(x, t):
        assert t.shape == (x.shape[0],)
        seen.append(t)
        return score(x, t)

    x, nfe = draw(sde, recording, 8, **args)
    times = torch.cat(seen)
    eps = args.get("eps", 1e-3)
    assert nfe == len(seen) and (expected_nfe is None or nfe == expected_nfe)
    assert times.min() >= eps - 1e-12 and times.max() <= sde.T + 1e-12
    assert x.shape == (8, *SHAPE) and x.dtype == F64 and torch.isfinite(x).all()


def test_pc_logsnr_schedule_evaluates_the_model_on_the_dpm2m_grid(problem):
    """pc's schedule / warp options give the times of dpm2m's grid (dpm_solver.solver_times); "time" is linspace."""
    from samplers.dpm_solver import solver_times

    data, sdes = problem
    sde = sdes["nivp"]
    score = data.score_fn(sde)
    for options, expected in [
        ({"schedule": "logsnr", "warp": 0.7}, solver_times(sde, 12, 1e-3, "logsnr", 0.7)),
        ({}, torch.linspace(1.0, 1e-3, 12, dtype=F64)),
    ]:
        seen: list[float] = []

        def recording(x, t, seen=seen):
            seen.append(float(t[0]))
            return score(x, t)

        draw(sde, recording, 4, method="pc", steps=12, **options)
        assert seen == pytest.approx(expected.tolist(), rel=1e-12, abs=0)
    with pytest.raises(ValueError, match="schedule"):
        draw(sde, score, 4, method="pc", steps=12, schedule="karras")


def test_dtype_defaults_to_torch_default_and_progress_is_off_by_default(problem, capsys):
    data, sdes = problem
    sde = sdes["nivp"]
    x, _ = samplers.sample(sde, data.score_fn(sde), (4, *SHAPE), method="ddim", steps=5)
    assert x.dtype == torch.get_default_dtype()
    assert capsys.readouterr().err == ""
    samplers.sample(sde, data.score_fn(sde), (4, *SHAPE), method="ddim", steps=5, progress=True)
    assert "ddim" in capsys.readouterr().err


def test_score_fn_from_eps(problem):
    """score = -Sigma^{-1/2} eps / std (kernels.score_scale); samplers at the marginal std use eps directly, with the
    same result as the exact score."""
    data, sdes = problem
    sde = sdes["nivp"]
    score = data.score_fn(sde)
    eps_model = ScoreModel(sde, score, "score").eps  # eps = -std(t) Sigma^{1/2} score

    wrapped = samplers.score_fn_from_eps(sde, eps_model)
    assert isinstance(wrapped, ScoreModel) and wrapped.prediction == "eps"
    x = torch.randn(5, *SHAPE, dtype=F64)
    t = torch.full((5,), 0.3, dtype=F64)
    std = sde.marginal_std(t)[:, None, None, None]
    torch.testing.assert_close(wrapped(x, t), -sde.cov.inv_sqrt_mul(eps_model(x, t)) / std, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wrapped(x, t), score(x, t), rtol=1e-10, atol=1e-10)
    a, _ = draw(sde, wrapped, 6, method="dpm2m", steps=20)
    b, _ = draw(sde, score, 6, method="dpm2m", steps=20)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sde_name, method",
    [("nivp", "als"), ("vp", "cas"), ("nive", "ddpm"), ("ve", "ddim"), ("subvp", "ddpm"), ("subvp", "als")],
)
def test_method_that_does_not_fit_the_sde_is_refused(problem, sde_name, method):
    data, sdes = problem
    with pytest.raises(ValueError, match=f"method '{method}' does not apply to"):
        draw(sdes[sde_name], data.score_fn(sdes[sde_name]), 2, method=method, steps=10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "ddim", "steps": 0}, ValueError, "steps"),
        ({"method": "ddim", "steps": 2.5}, ValueError, "steps"),
        ({"method": "ddim", "steps": True}, ValueError, "steps"),
        ({"method": "ddpm", "steps": 1001}, ValueError, "steps"),
        ({"method": "magic"}, ValueError, "method"),
        ({"method": "ddim", "snr": 0.1}, TypeError, "unknown option.*snr"),
        ({"method": "pc", "predictor": "heun"}, ValueError, "predictor"),
        ({"method": "pc", "corrector": "hmc"}, ValueError, "corrector"),
        ({"method": "pc", "predictor": "none", "corrector": "none"}, ValueError, "nothing"),
        ({"method": "pc", "predictor": "ancestral", "steps": 100}, ValueError, "steps = sde.N"),
        ({"method": "pc", "n_corrector": 0, "corrector": "langevin"}, ValueError, "n_corrector"),
        ({"method": "ode", "solver": "euler"}, ValueError, "give steps"),
        ({"method": "ode", "steps": 10}, ValueError, "adaptive"),
        ({"method": "ode", "solver": "rk99"}, ValueError, "solver"),
        ({"method": "ode", "rtol": -1.0}, ValueError, "rtol"),
        ({"method": "ddpm", "var": "fixed"}, ValueError, "var"),
        ({"method": "ddim", "eta": 1.5}, ValueError, "eta"),
        ({"method": "dpm2m", "order": 3}, ValueError, "order"),
        ({"method": "dpm2m", "schedule": "cosine"}, ValueError, "schedule"),
        ({"method": "dpm2m", "eps": 0.0}, ValueError, "eps"),
        ({"method": "unipc", "order": 4}, ValueError, "order"),
        ({"method": "unipc", "corrector": "langevin"}, ValueError, "corrector"),
        ({"method": "unipc", "schedule": "edm"}, ValueError, "schedule"),
        ({"method": "unipc", "eps": 1.5}, ValueError, "eps"),
    ],
)
def test_bad_arguments_raise_clear_errors(problem, kwargs, error, match):
    data, sdes = problem
    with pytest.raises(error, match=match):
        draw(sdes["nivp"], data.score_fn(sdes["nivp"]), 2, **kwargs)


def test_smld_argument_errors(problem):
    data, sdes = problem
    sde = sdes["nive"]
    with pytest.raises(ValueError, match="steps >= 2"):
        draw(sde, data.score_fn(sde), 2, method="cas", steps=1)
    with pytest.raises(ValueError, match="1 - 1/r"):
        draw(sde, data.score_fn(sde), 2, method="cas", steps=10)  # eta = 0.06 < 1 - 1/r for 10 levels
    with pytest.raises(ValueError, match="eps_step"):
        draw(sde, data.score_fn(sde), 2, method="als", steps=10, eps_step=-1.0)
    with pytest.raises(TypeError, match="unknown option.*n_steps_each"):
        draw(sde, data.score_fn(sde), 2, method="cas", steps=200, n_steps_each=2)
    with pytest.raises(ValueError, match="shape"):
        samplers.sample(sde, data.score_fn(sde), (2, 1, 4, 4), method="als")


@pytest.mark.parametrize("args", [{"method": "ddim", "steps": 20}, {"method": "ode"}, {"method": "pc", "steps": 20}])
def test_non_finite_sample_stops_with_step_and_time(problem, args):
    data, sdes = problem
    sde = sdes["nivp"]
    score = data.score_fn(sde)

    def breaks_below_half(x, t):
        s = score(x, t)
        return s * float("nan") if float(t[0]) < 0.5 else s

    with pytest.raises(FloatingPointError, match=r"step .*t = 0\.[0-4]"):
        draw(sde, breaks_below_half, 3, **args)


def test_prior_is_the_sde_prior(problem):
    """The first state is c Sigma^{1/2} z with z the kernels' white noise of the first seed drawn from generator."""
    data, sdes = problem
    sde = sdes["nive"]
    generator = torch.Generator().manual_seed(9)
    seen = []

    def first(x, t):
        seen.append(x.clone())
        return data.score_fn(sde)(x, t)

    draw(sde, first, 3, seed=9, method="cas", steps=200)
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    _, g = kernels.gff_noise(sde.cov, 3, seed, dtype=F64)
    torch.testing.assert_close(seen[0], sde.prior_scale * g, rtol=1e-12, atol=1e-12)
    assert math.isclose(sde.prior_scale, 50.0)

"""Closed-form identities of the sampler steps (docs/math.md §2-4, 8.8, 8.10): dense Gaussian references, to 1e-12.

* NI-DDPM posterior: the ancestral step's mean and covariance equal dense Gaussian conditioning of
  (x_{t'}, x_t | x_0) with noise covariance Sigma, for a full step and a subsequence step (8.8).
* NI-DDIM: eta = 1 gives sigma^2 = beta~; every eta keeps the marginal N(sqrt(abar') x_0, (1 - abar') Sigma) (8.10).
* Tweedie in eps form (the samplers' denoising step) equals Gaussian conditioning E[x_0 | x_t] (8.10).
* DPM-Solver++: the first-order step is DDIM (eta = 0) for VP and VE; order 1 converges at rate 1 and 2M at rate 2
  to the probability-flow ODE solution; CAS with eta = 1 - 1/r is first-order DDIM for VE.
* UniPC's identities and orders: tests/test_unipc.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import kernels
import samplers
from samplers import ScoreModel
from samplers.common import time_grid
from samplers.discrete import ddim_coefficients, ddpm_coefficients, level_time, timestep_subsequence
from samplers.dpm_solver import exponential_step_weights, solver_times
from sde_lib import NIVESDE, NIVPSDE, GFFCovariance, cas_noise_scale
from tests.gaussian_oracle import SHAPE, GaussianMixture

D = 64
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize("level, previous", [(500, 499), (509, 499), (99, None)])
def test_ddpm_step_is_the_dense_gaussian_posterior(cov, level, previous):
    """c_x x_t + c_eps Sigma^{1/2} eps = mu~ and c_z^2 Sigma = beta~ Sigma, by dense conditioning
    (docs/math.md §8.8)."""
    sde = NIVPSDE(cov=cov)
    abar_all = sde.schedule.alphas_cumprod
    abar = float(abar_all[level])
    abar_prev = 1.0 if previous is None else float(abar_all[previous])
    alpha = abar / abar_prev
    sigma = cov.dense(F64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, *SHAPE, generator=g, dtype=F64)
    eps = torch.randn(3, *SHAPE, generator=g, dtype=F64)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * cov.sqrt_mul(eps)
    # joint of (x_prev, x_t) given x0: x_prev = sqrt(abar') x0 + noise', x_t = sqrt(alpha) x_prev + noise
    c11 = (1 - abar_prev) * sigma
    c12 = math.sqrt(alpha) * (1 - abar_prev) * sigma
    c22 = (1 - abar) * sigma
    gain = torch.linalg.solve(c22, c12.T).T  # c12 c22^-1
    mean = math.sqrt(abar_prev) * flat(x0) + (flat(x_t) - math.sqrt(abar) * flat(x0)) @ gain.T
    post_cov = c11 - gain @ c12.T
    c_x, c_eps, c_z = ddpm_coefficients(abar, abar_prev, "posterior")
    step_mean = kernels.ni_update(x_t, eps, c_x, c_eps, 0.0, cov, None)
    torch.testing.assert_close(flat(step_mean), mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_z**2 * sigma, post_cov, rtol=0, atol=1e-12)
    beta_tilde = (1 - abar_prev) / (1 - abar) * (1 - alpha)
    assert math.isclose(c_z**2, beta_tilde, rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(ddpm_coefficients(abar, abar_prev, "beta")[2] ** 2, 1 - alpha, rel_tol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_keeps_the_marginal_and_eta_one_is_the_posterior_variance(eta):
    """x_t = sqrt(abar) x0 + sqrt(1-abar) Sigma^{1/2} eps: the DDIM step has law N(sqrt(abar') x0, (1-abar') Sigma)."""
    for abar, abar_prev in ((0.3, 0.5), (0.01, 0.9), (0.7, 1.0)):
        c_x, c_eps, c_z = ddim_coefficients(abar, abar_prev, eta)
        assert math.isclose(c_x * math.sqrt(abar), math.sqrt(abar_prev), rel_tol=1e-12)
        assert math.isclose((c_x * math.sqrt(1 - abar) + c_eps) ** 2 + c_z**2, 1 - abar_prev, abs_tol=1e-12)
        if eta == 1.0:
            assert math.isclose(c_z, ddpm_coefficients(abar, abar_prev, "posterior")[2], abs_tol=1e-12)


def test_timestep_subsequence_and_level_times():
    """Evenly spaced levels ending at N - 1, and t_i = (i + 1) T / N with sde.discrete_index(t_i) = i."""
    sde = NIVPSDE(cov=GFFCovariance(SHAPE))
    assert torch.equal(timestep_subsequence(1000, 1000), torch.arange(1000))
    assert torch.equal(timestep_subsequence(1000, 4), torch.tensor([249, 499, 749, 999]))
    assert timestep_subsequence(1000, 1).tolist() == [999]
    times = torch.tensor([level_time(sde, i) for i in range(1000)], dtype=F64)
    assert torch.equal(sde.discrete_index(times), torch.arange(1000))


@pytest.mark.parametrize("sde_name", ["nivp", "nive"])
def test_denoising_step_is_gaussian_conditioning(cov, sde_name):
    """x0 = (x - std Sigma^{1/2} eps*) / a, eps* = -std Sigma^{1/2} grad log p_t, is E[x0 | x_t] (docs/math.md §8.10).

    Here x_t = a x0 + std Sigma^{1/2} z with the SDE's own (a, std), so p_t = N(a m, a^2 S + std^2 Sigma).
    """
    sde = NIVPSDE(cov=cov) if sde_name == "nivp" else NIVESDE(cov=cov)
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(1))
    t = torch.full((4,), 0.4, dtype=F64)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=F64)
    a, std = float(sde.mean_coeff(t)[0]), float(sde.marginal_std(t)[0])
    m, S = data.means[0], data.covs[0]
    C = a**2 * S + std**2 * cov.dense(F64)
    p_t = GaussianMixture(data.weights, a * data.means, C[None], SHAPE)
    eps = ScoreModel(sde, lambda y, u: p_t.score(y), "score").eps(x, t)
    x0 = kernels.ni_update(x, eps, 1 / a, -std / a, 0.0, cov, None)
    expected = m + (flat(x) - a * m) @ torch.linalg.solve(C, a * S)  # m + a S C^-1 (x - a m), C symmetric
    torch.testing.assert_close(flat(x0), expected, rtol=0, atol=1e-11)


def test_first_order_exponential_step_is_ddim(cov):
    """DPM-Solver++(1) from s to t equals the NI-DDIM (eta = 0) step: VP with abar = a^2, VE with a = 1."""
    sde = NIVPSDE(cov=cov)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, *SHAPE, generator=g, dtype=F64)
    eps = torch.randn(2, *SHAPE, generator=g, dtype=F64)
    for s, t in ((0.9, 0.5), (0.3, 0.05), (0.05, 0.001)):
        ts = torch.tensor([s, t], dtype=F64)
        a, std, lam = sde.mean_coeff(ts).tolist(), sde.marginal_std(ts).tolist(), sde.log_snr(ts).tolist()
        u, v = exponential_step_weights(a[:1], std[:1], lam[:1], a[1], std[1], lam[1], order=1)
        c_x, c_eps, _ = ddim_coefficients(a[0] ** 2, a[1] ** 2, 0.0)
        assert math.isclose(u[0], c_x, rel_tol=1e-12) and math.isclose(v[0], c_eps, rel_tol=1e-10, abs_tol=1e-14)
        torch.testing.assert_close(
            kernels.ni_update(x, eps, u[0], v[0], 0.0, cov, None),
            math.sqrt(a[1] ** 2) * (x - std[0] * cov.sqrt_mul(eps)) / a[0] + std[1] * cov.sqrt_mul(eps),
            rtol=0,
            atol=1e-12,
        )
    ve = NIVESDE(cov=cov)
    ts = torch.tensor([0.8, 0.2], dtype=F64)
    a, std, lam = ve.mean_coeff(ts).tolist(), ve.marginal_std(ts).tolist(), ve.log_snr(ts).tolist()
    u, v = exponential_step_weights(a[:1], std[:1], lam[:1], a[1], std[1], lam[1], order=1)
    assert math.isclose(u[0], 1.0, rel_tol=1e-12) and math.isclose(v[0], std[1] - std[0], rel_tol=1e-12)


def test_dpm_solver_order_one_run_is_a_ddim_run(cov):
    """sample(dpm2m, order=1) equals DDIM steps (eta = 0) with abar = a(t)^2 on the same grid (its default, "signal"),
    to the end."""
    sde = NIVPSDE(cov=cov)
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(4))
    score = data.score_fn(sde)
    out, _ = samplers.sample(
        sde, score, (6, *SHAPE), method="dpm2m", steps=8, order=1, generator=torch.Generator().manual_seed(5), dtype=F64
    )
    times = solver_times(sde, 8, 1e-3, "signal")
    abar = (sde.mean_coeff(times) ** 2).tolist() + [1.0]
    seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(5)))
    x = sde.prior_scale * kernels.gff_noise(cov, 6, seed, dtype=F64)[1]
    for k in range(8):
        t = torch.full((6,), float(times[k]), dtype=F64)
        c_x, c_eps, _ = ddim_coefficients(abar[k], abar[k + 1], 0.0)
        x = kernels.ni_update(x, ScoreModel(sde, score, "score").eps(x, t), c_x, c_eps, 0.0, cov, None)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-10)


def test_cas_at_the_deterministic_eta_is_first_order_ddim(cov):
    """CAS with eta = 1 - 1/r (beta_cas = 0) is the first-order exponential integrator on linspace(T, eps, K).

    eta sits a relative 1e-14 above the bound (so that rounding cannot put it below), which leaves noise of scale
    beta_cas sigma_max; the tolerance allows 20 times that.
    """
    sde = NIVESDE(cov=cov)
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(6))
    steps, eps = 50, 1e-3
    sigmas = sde.marginal_std(time_grid(sde, steps, eps))
    ratio = float(sigmas[0] / sigmas[1])
    eta = (1 - 1 / ratio) * (1 + 1e-14)
    beta = cas_noise_scale(eta, ratio)
    args = {"generator": torch.Generator().manual_seed(7), "dtype": F64}
    eps_step = eta * float(sigmas[-1]) ** 2
    cas, nfe_cas = samplers.sample(sde, data.score_fn(sde), (5, *SHAPE), "cas", steps, eps_step=eps_step, **args)
    args["generator"] = torch.Generator().manual_seed(7)
    ddim, nfe_ddim = samplers.sample(
        sde, data.score_fn(sde), (5, *SHAPE), "dpm2m", steps, order=1, schedule="time", **args
    )
    assert nfe_cas == nfe_ddim == steps
    assert beta < 1e-6
    torch.testing.assert_close(cas, ddim, rtol=0, atol=1e-9 + 20 * beta * sde.sigma_max)


@pytest.mark.parametrize("order, rate", [(1, 1.0), (2, 2.0)])
def test_dpm_solver_converges_at_its_order(cov, order, rate):
    """Error at t = eps against a tight dopri5 solve of the same ODE from the same x_T halves (order 1) or quarters
    (2M) when the steps double: observed rates within 0.35 of the order."""
    sde = NIVPSDE(cov=cov)
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(8))
    score = data.score_fn(sde)

    def run(method, **options):
        g = torch.Generator().manual_seed(9)
        return samplers.sample(sde, score, (16, *SHAPE), method=method, generator=g, dtype=F64, **options)[0]

    reference = run("ode", rtol=1e-11, atol=1e-11, denoise=False)
    errors = [
        float((run("dpm2m", steps=k, order=order, denoise=False, schedule="time") - reference).norm())
        for k in (40, 80, 160)
    ]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(r - rate) < 0.35 for r in rates), (errors, rates)

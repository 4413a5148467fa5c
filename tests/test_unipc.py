"""UniPC (docs/math.md §3.1): the weights, the corrector's equations, the orders of a step, and its runs.

* `interpolation_weights` integrate e^{-(h - u)} P(u) exactly for polynomials P of degree < number of nodes (against
  scipy quadrature), with the moments' series and recursion meeting at h = 1.
* order=1 without corrector is DDIM (eta = 0) on the same grid (the dpm2m order-1 run, itself a DDIM run).
* The fused single update per step equals the two-stage UniPC of Zhao et al. (2023) written with their R, b and rho
  (an independent transcription), for B(h) = e^h - 1 and B(h) = h alike: solved exactly, B(h) cancels.
* Orders: from the exact trajectory of Gaussian data, one predictor step of order p errs by O(h^{p+1}) and the
  corrected step by O(h^{p+2}); sampled runs on the log-SNR grid converge at least at rate p (p + 1 corrected).
"""

from __future__ import annotations

import math

import pytest
import scipy.integrate
import scipy.optimize
import torch
from torchdiffeq import odeint

import kernels
import samplers
from samplers import ScoreModel
from samplers.common import probability_flow_drift
from samplers.dpm_solver import solver_times
from samplers.unipc import exponential_moments, interpolation_weights
from sde_lib import NIVPSDE
from tests.gaussian_oracle import SHAPE, GaussianMixture

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def draw(sde, score, n=6, seed=5, **args):
    gen = torch.Generator().manual_seed(seed)
    return samplers.sample(sde, score, (n, *SHAPE), generator=gen, dtype=F64, **args)[0]


@pytest.mark.parametrize("h", [0.01, 0.3, 0.999, 1.0, 2.5, 8.0])
def test_weights_integrate_polynomials_exactly(h):
    for nodes in ([0.0], [0.0, -0.8 * h], [0.0, -0.8 * h, -1.9 * h], [0.0, -h, -2.2 * h, h]):
        w = interpolation_weights(nodes, h)
        for degree in range(len(nodes)):
            exact = scipy.integrate.quad(lambda u, d=degree: math.exp(-(h - u)) * u**d, 0, h, epsabs=0, epsrel=1e-13)[0]
            value = sum(w_j * u**degree for w_j, u in zip(w, nodes))
            assert math.isclose(value, exact, rel_tol=1e-10, abs_tol=1e-15), (h, nodes, degree, value, exact)
    below, above = exponential_moments(1 - 1e-12, 4), exponential_moments(1.0, 4)  # series | recursion
    assert all(math.isclose(x, y, rel_tol=1e-10) for x, y in zip(below, above))
    assert exponential_moments(float("inf"), 1) == [1.0]


def test_order_one_without_corrector_is_a_ddim_run(cov):
    """unipc(order=1, corrector="none") equals dpm2m(order=1) on the same grid, which is a DDIM run
    (tests/test_samplers_identities.py::test_dpm_solver_order_one_run_is_a_ddim_run)."""
    sde = NIVPSDE(cov=cov)
    score = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(4)).score_fn(sde)
    for schedule in ("signal", "logsnr"):
        a = draw(sde, score, method="unipc", steps=8, order=1, corrector="none", schedule=schedule)
        b = draw(sde, score, method="dpm2m", steps=8, order=1, schedule=schedule)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def unipc_coefficients(h: float, rks: list[float], order: int, b_of_h: str) -> tuple[list[float], float, float]:
    """Zhao et al. (2023), data prediction: rho solving R rho = b, with h_phi_1 and B(h) (hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if b_of_h == "h" else math.expm1(hh)
    R, b, factorial = [], [], 1
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rho = torch.linalg.solve(torch.tensor(R, dtype=F64), torch.tensor(b, dtype=F64)).tolist() if rks else []
    return rho, h_phi_1, B_h


@pytest.mark.parametrize("b_of_h", ["exp", "h"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_fused_update_is_the_two_stage_unipc(cov, order, b_of_h):
    """Predictor x_t = (std_t/std_s) x_s - a_t h_phi_1 m_0 - a_t B(h) sum_k rho_k D_k, D_k = (m_k - m_0) / r_k,
    r_k = (lambda_k - lambda_s) / h; the corrector adds the new node (r = 1) and replaces x_t (docs/math.md §3.1)."""
    sde = NIVPSDE(cov=cov)
    model = ScoreModel(sde, GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(6)).score_fn(sde), "score")
    steps = 7
    fused = draw(sde, model, method="unipc", steps=steps, order=order, denoise=False)
    times = solver_times(sde, steps + 1, 1e-3, "signal")
    a, std, lam = sde.mean_coeff(times).tolist(), sde.marginal_std(times).tolist(), sde.log_snr(times).tolist()
    seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(5)))
    x = sde.prior_scale * kernels.gff_noise(cov, 6, seed, dtype=F64)[1]
    x0s: list[torch.Tensor] = []  # data predictions, newest last
    x_prev, used = None, 0
    for k in range(steps):
        t = torch.full((6,), float(times[k]), dtype=F64)
        x0s.append((x - std[k] * cov.sqrt_mul(model.eps(x, t))) / a[k])
        if used:  # corrector from k - 1 over the previous predictor's nodes and the new one
            h = lam[k] - lam[k - 1]
            rks = [(lam[k - 1 - i] - lam[k - 1]) / h for i in range(1, used)] + [1.0]
            rho, h_phi_1, B_h = unipc_coefficients(h, rks, used, b_of_h)
            m0 = x0s[-2]
            D = [(x0s[-2 - i] - m0) / rks[i - 1] for i in range(1, used)] + [x0s[-1] - m0]
            x = std[k] / std[k - 1] * x_prev - a[k] * h_phi_1 * m0 - a[k] * B_h * sum(r * d for r, d in zip(rho, D))
        used = min(order, k + 1)
        h = lam[k + 1] - lam[k]
        rks = [(lam[k - i] - lam[k]) / h for i in range(1, used)]
        rho, h_phi_1, B_h = unipc_coefficients(h, rks, used - 1, b_of_h)
        m0 = x0s[-1]
        D = [(x0s[-1 - i] - m0) / rks[i - 1] for i in range(1, used)]
        x_prev = x
        x = std[k + 1] / std[k] * x - a[k + 1] * h_phi_1 * m0 - a[k + 1] * B_h * sum(r * d for r, d in zip(rho, D))
    torch.testing.assert_close(fused, x, rtol=0, atol=1e-10)


def exact_trajectory(sde, model, data, lams: list[float], n: int = 4) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Times of `lams` and the probability-flow ODE solution through an exact sample of p_t at lams[0] (dopri5,
    tolerances 1e-12)."""

    def time_of(lam):
        def gap(t):
            return float(sde.log_snr(torch.tensor(t, dtype=F64))) - lam

        return scipy.optimize.brentq(gap, 1e-6, sde.T, xtol=1e-15)

    times = torch.tensor([time_of(v) for v in lams], dtype=F64)
    first = data.marginal(sde, float(times[0])).sample(n, torch.Generator().manual_seed(1))

    def drift(t, y):
        return probability_flow_drift(sde, model.eps, y, t.expand(n))

    return times, list(odeint(drift, first, times, method="dopri5", rtol=1e-12, atol=1e-12))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_one_step_errs_at_the_order_of_its_polynomial(cov, order):
    """From the exact x0_j at lambda_s, lambda_s - h, ...: the predictor errs by ~h^{p+1} and the corrected step
    (x0_t read at the predicted point) by ~h^{p+2}: halving h, log2 of the error ratio within 0.35 of p + 1, p + 2."""
    sde = NIVPSDE(cov=cov)
    data = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(8), low=0.05, high=0.5)
    model = ScoreModel(sde, data.score_fn(sde), "score")
    lam_s, errors = 1.0, {"predictor": [], "corrected": []}
    for h in (0.2, 0.1, 0.05):
        lams = [lam_s - j * h for j in range(order - 1, -1, -1)] + [lam_s + h]  # oldest first, then s, then t
        times, xs = exact_trajectory(sde, model, data, lams)
        a, std = (v.tolist() for v in sde.marginal(times))

        def x0(x, j, times=times, a=a, std=std):
            return (x - std[j] * cov.sqrt_mul(model.eps(x, times[j].expand(x.shape[0])))) / a[j]

        s, t = order - 1, order
        history = [x0(xs[j], j) for j in range(order)]
        nodes = [lams[j] - lam_s for j in range(order)]
        predicted = std[t] / std[s] * xs[s] + a[t] * sum(
            w * m for w, m in zip(interpolation_weights(nodes, h), history)
        )
        corrected = std[t] / std[s] * xs[s] + a[t] * sum(
            w * m for w, m in zip(interpolation_weights(nodes + [h], h), history + [x0(predicted, t)])
        )
        errors["predictor"].append(float((predicted - xs[t]).norm()))
        errors["corrected"].append(float((corrected - xs[t]).norm()))
    for kind, rate in (("predictor", order + 1), ("corrected", order + 2)):
        e = errors[kind]
        rates = [math.log2(e[i] / e[i + 1]) for i in range(2)]
        assert abs(rates[-1] - rate) < 0.35, (kind, e, rates)


@pytest.fixture(scope="module")
def gaussian_run(cov):
    """NIVP, Gaussian data with its exact score, and the probability-flow ODE's x_eps from the runs' x_T (dopri5,
    tolerances 1e-12)."""
    sde = NIVPSDE(cov=cov)
    score = GaussianMixture.gaussian(SHAPE, torch.Generator().manual_seed(8)).score_fn(sde)
    return sde, score, draw(sde, score, n=16, seed=9, method="ode", rtol=1e-12, atol=1e-12, denoise=False)


@pytest.mark.parametrize("order, corrector, rate", [(1, "none", 1), (2, "none", 2), (3, "none", 3), (1, "unic", 2),
                                                    (2, "unic", 3), (3, "unic", 4)])  # fmt: skip
def test_runs_converge_at_least_at_their_order(gaussian_run, order, corrector, rate):
    """Error at t = eps against a tight dopri5 solve from the same x_T, on the log-SNR grid (where the first, lower
    order steps fall where x0 barely moves): observed rate at least the order minus 0.35 between 120 and 240 steps.
    On a uniform lambda grid the third-order predictor converges faster (about 4.4: the leading term integrates to
    x0's derivatives at the two ends, where they vanish)."""
    sde, score, reference = gaussian_run
    options = {"method": "unipc", "order": order, "corrector": corrector, "denoise": False, "schedule": "logsnr"}
    errors = [float((draw(sde, score, n=16, seed=9, steps=k, **options) - reference).norm()) for k in (60, 120, 240)]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert rates[-1] > rate - 0.35, (errors, rates)

"""The spectral family (docs/math.md §11): bases, the blur and heat schedules, the monotonicity rule, the forward
rates, the existing SDEs as members, and the per-frequency DPM-Solver++(2M) on Gaussian data diagonal in the basis
(exact denoiser known, exact probability-flow map known)."""

import math

import numpy as np
import pytest
import torch

from samplers import ScoreModel, sample
from samplers.common import Run
from sde_lib import NIVPSDE, VPSDE, BlurSDE, DCTBasis, GFFCovariance, HeatSDE, SpectralSDE, make_sde
from sde_lib.spectral import dct_matrix
from tests.gaussian_oracle import DiagonalGaussian

F64 = torch.float64
SHAPE = (1, 8, 8)


def dense(transform, shape=SHAPE) -> torch.Tensor:
    """The (D, D) matrix of a linear map of (C, H, W) images."""
    D = math.prod(shape)
    return transform(torch.eye(D, dtype=F64).reshape(D, *shape)).reshape(D, D)


def test_dct_basis_is_orthonormal_and_matches_scipy():
    from scipy.fft import dctn

    basis = DCTBasis((2, 4, 6))
    Q = dense(basis.to_basis, (2, 4, 6))
    torch.testing.assert_close(Q @ Q.T, torch.eye(48, dtype=F64), rtol=0, atol=1e-13)
    x = torch.randn(3, 2, 4, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1)))
    torch.testing.assert_close(basis.to_basis(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(basis.from_basis(basis.to_basis(x)), x, rtol=0, atol=1e-12)
    assert dct_matrix(5, torch.float32).dtype == torch.float32


def test_blur_schedule_is_the_papers_formula():
    """a_k = alpha d_k, d_k = (1 - d_min) exp(-Lambda_k tau) + d_min, tau = sigma_B,max^2 sin^4(pi t/2)/2, s = sigma,
    sigma_B,max = 20 H / 32, alpha, sigma of the VP SDE; evaluated independently in numpy."""
    sde = BlurSDE(SHAPE)
    assert sde.sigma_blur_max == 5.0
    t = np.array([0.05, 0.3, 0.7, 1.0])
    a, s = (v.numpy() for v in sde.spectral_scales(torch.from_numpy(t)))
    log_alpha = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    alpha, sigma = np.exp(log_alpha), np.sqrt(1 - np.exp(2 * log_alpha))
    u, v = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    lam = np.pi**2 * (u**2 + v**2) / 64
    tau = 25 * np.sin(np.pi * t / 2) ** 4 / 2
    d = (1 - 1e-3) * np.exp(-lam[None] * tau[:, None, None]) + 1e-3
    np.testing.assert_allclose(a[:, 0], alpha[:, None, None] * d, rtol=1e-12)
    np.testing.assert_allclose(s[:, 0], np.broadcast_to(sigma[:, None, None], d.shape), rtol=1e-12)


def test_heat_schedule_starts_at_the_data_and_keeps_its_dc_coefficient():
    sde = HeatSDE(SHAPE)
    a, s = sde.spectral_scales(torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    torch.testing.assert_close(a[0], torch.ones_like(a[0]))  # A(0) = I: the process starts at the data
    assert torch.all(a[:, 0, 0, 0] == 1.0) and float(a[2].min()) == pytest.approx(1e-3)
    torch.testing.assert_close(s[:, 0, 0, 0], torch.tensor([0.01, 0.01 * 5000**0.5, 50.0], dtype=F64))
    images = torch.full((4, *SHAPE), -0.5, dtype=F64)  # DC coefficient -0.5 * 8 = -4
    assert sde.dc_prior_bias(images) == pytest.approx(16 / (2 * 50**2))


class RisingSchedule(SpectralSDE):
    """A schedule whose signal grows back after t = 0.5 at the highest frequency: lambda rises there."""

    def __init__(self):
        super().__init__(DCTBasis(SHAPE), 100, SHAPE)
        self.check_monotone()

    def log_scales(self, t):
        bump = torch.zeros(1, *SHAPE, dtype=F64)
        bump[..., -1, -1] = 1.0
        return (-2 * t + 10 * torch.relu(t - 0.5))[:, None, None, None] * bump, torch.log(0.01 + t)[:, None, None, None]


def test_a_schedule_whose_lambda_rises_is_refused_with_the_coefficient_and_time():
    with pytest.raises(ValueError, match=r"must decrease in t, but coefficient \(0, 7, 7\) rises at t = 0\.5"):
        RisingSchedule()


def test_blur_and_heat_refuse_coloured_noise():
    for name in ("blur", "heat"):
        with pytest.raises(ValueError, match="white noise only"):
            make_sde(name, SHAPE, cov=GFFCovariance(SHAPE))
        assert isinstance(make_sde(name, SHAPE), SpectralSDE)


@pytest.mark.parametrize("name", ["blur", "heat", "nivp", "ve"])
def test_forward_rates_are_the_derivatives_of_the_scales(name):
    """f_k = d log a_k/dt and lambda_k' (forward-mode) against central differences; the diffusion
    g_k^2 = d s_k^2/dt - 2 f_k s_k^2 equals -2 lambda_k' s_k^2 and is positive."""
    sde = make_sde(name, SHAPE, sigma_max=9.0)
    t, h = torch.tensor([0.1, 0.4, 0.8], dtype=F64), 1e-6
    f, dlam = sde.spectral_rates(t)
    (la_hi, ls_hi), (la_lo, ls_lo) = sde.log_spectral_scales(t + h), sde.log_spectral_scales(t - h)
    torch.testing.assert_close(*torch.broadcast_tensors(f, (la_hi - la_lo) / (2 * h)), rtol=1e-6, atol=1e-6)
    fd_lam = (la_hi - ls_hi - la_lo + ls_lo) / (2 * h)
    torch.testing.assert_close(*torch.broadcast_tensors(dlam, fd_lam), rtol=1e-6, atol=1e-6)
    _, s = sde.spectral_scales(t)
    g2 = ((2 * ls_hi).exp() - (2 * ls_lo).exp()) / (2 * h) - 2 * f * s**2
    torch.testing.assert_close(*torch.broadcast_tensors(g2, -2 * dlam * s**2), rtol=1e-5, atol=1e-9)
    assert bool((g2 > 0).all())


class SpectralNIVP(SpectralSDE):
    """NIVP written as a spectral member: a = alpha(t), s_k = sigma(t) sqrt(Sigma_k) in the covariance's Hartley
    basis, prior N(0, Sigma)."""

    def __init__(self, cov):
        super().__init__(cov, 1000, cov.shape)
        self.schedule, self.lam = NIVPSDE(cov=cov), cov.eigenvalues()

    def log_scales(self, t):
        log_a = self.schedule._log_mean_coeff(t)
        log_std = 0.5 * torch.log(-torch.expm1(2 * log_a))
        return log_a[:, None, None, None], log_std[:, None, None, None] + 0.5 * self.lam.log()

    def prior_spectral_std(self):
        return self.lam.sqrt()


@pytest.mark.parametrize("power", [0.0, 1.0])
def test_vp_and_nivp_as_spectral_members_equal_the_existing_classes(power):
    cov = GFFCovariance(SHAPE, power=power)
    member, existing = SpectralNIVP(cov), (VPSDE(shape=SHAPE) if power == 0 else NIVPSDE(cov=cov))
    t = torch.tensor([0.01, 0.5, 1.0], dtype=F64)
    for got, want in zip(member.spectral_scales(t), existing.spectral_scales(t)):
        torch.testing.assert_close(got, want.expand_as(got), rtol=1e-13, atol=0)
    torch.testing.assert_close(member.log_snr(t), existing.log_snr(t) - 0.5 * cov.eigenvalues().log().mean())
    z = existing.prior_sampling((3, *SHAPE), torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(member.prior_logp(z), existing.prior_logp(z), rtol=1e-12, atol=1e-10)
    eps = DiagonalGaussian.random(member, seed=1).model(member).network  # one network for both
    runs = [
        sample(
            s,
            ScoreModel(s, eps, "eps", s.marginal),
            (4, *SHAPE),
            "dpm2m",
            12,
            torch.Generator().manual_seed(2),
            dtype=F64,
            schedule="time",
        )  # fmt: skip
        for s in (member, existing)
    ]
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=1e-10)


def _flow_error(sde, data, steps: int, per_frequency: bool, B: int = 64) -> float:
    """RMS error (spectral coefficients) of dpm2m on the log-SNR grid, ended at t = 1e-3, against the exact map."""
    shape = (B, *sde.cov.shape)
    y_T = sde.to_spectral(Run(sde, data.model(sde), shape, torch.Generator().manual_seed(5), False, None, F64).prior())
    x, nfe = sample(sde, data.model(sde), shape, "dpm2m", steps, torch.Generator().manual_seed(5), dtype=F64,
                    schedule="logsnr", denoise=False, per_frequency=per_frequency)  # fmt: skip
    assert nfe == steps
    return float((sde.to_spectral(x) - data.flow(sde, y_T, 1e-3)).square().mean().sqrt())


def test_per_frequency_dpm2m_converges_at_second_order_on_blur_where_a_scalar_lambda_step_stalls():
    """On the blurring schedule the per-coefficient step converges at order >= 1.5 (measured: about 2); the step
    with the mean lambda for every coefficient does not converge at all (its error grows with the steps)."""
    sde = BlurSDE(SHAPE)
    data = DiagonalGaussian.random(sde, seed=3)
    errors = [_flow_error(sde, data, k, per_frequency=True) for k in (20, 40, 80)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert min(orders) >= 1.5, (errors, orders)
    scalar = [_flow_error(sde, data, k, per_frequency=False) for k in (20, 80)]
    assert scalar[1] > 0.25 and scalar[1] > 100 * errors[2], (scalar, errors)


@pytest.mark.parametrize("name", ["blur", "heat"])
def test_dpm2m_reproduces_the_data_law_of_a_spectral_member(name):
    """2000 samples of 50-step dpm2m (to the data, on the log-SNR grid: the default "signal" grid's first step does
    not shrink with the step count, which these schedules feel; docs/math.md §11) from the exact model:
    per-coefficient mean and variance against N(mu_k, v_k), within 4.5 standard errors of the sample statistics
    plus the solver's bias (0.02 of the variance)."""
    sde = make_sde(name, SHAPE)
    data = DiagonalGaussian.random(sde, seed=4)
    n = 2000
    x, _ = sample(sde, data.model(sde), (n, *SHAPE), "dpm2m", 50, torch.Generator().manual_seed(6), dtype=F64,
               schedule="logsnr")  # fmt: skip
    y = sde.to_spectral(x)
    z_mean = (y.mean(0) - data.mu) / (data.var / n).sqrt()
    assert float(z_mean.abs().max()) < 4.5, float(z_mean.abs().max())
    ratio = y.var(0) / data.var
    assert float((ratio - 1).abs().max()) < 4.5 * math.sqrt(2 / n) + 0.02, float((ratio - 1).abs().max())


@pytest.mark.parametrize("name", ["blur", "heat", "nivp", "vp"])
def test_exact_likelihood_of_diagonal_gaussian_data_matches_the_closed_form(name):
    """log p(x) by the probability flow with the exact divergence, from t = 1e-5 to T, with the exact end-point
    density N(a_T mu, a_T^2 v + s_T^2) per coefficient, equals sum_k log N(y_k; a mu_k, a^2 v_k + s_k^2) at
    t = 1e-5 to 1e-4 nats (dopri5 at rtol = atol = 1e-7; 1e-9 for heat, whose noise spans 0.01 to 50 and whose
    solve at 1e-7 is off by up to 1.8e-3 nats)."""
    from samplers import log_likelihood

    sde = make_sde(name, SHAPE)
    data = DiagonalGaussian.random(sde, seed=7)
    eps_t, tol = 1e-5, 1e-9 if name == "heat" else 1e-7

    def logp(y, t):
        mean, sd = data.standardise(sde, y, t)
        return (-0.5 * math.log(2 * math.pi) - sd.log() - 0.5 * ((y - mean) / sd) ** 2).flatten(1).sum(1)

    x = sde.from_spectral(
        data.mu + data.var.sqrt() * torch.randn(3, *SHAPE, dtype=F64, generator=torch.Generator().manual_seed(8))
    )
    got, _, _ = log_likelihood(sde, data.model(sde), x, divergence="exact", solver="dopri5", rtol=tol, atol=tol,
                               eps=eps_t, prior_logp=lambda z: logp(sde.to_spectral(z), sde.T))  # fmt: skip
    torch.testing.assert_close(got, logp(sde.to_spectral(x), eps_t), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["blur", "heat"])
def test_hutchinson_likelihood_agrees_with_the_exact_one(name):
    """The mean of 64 Rademacher estimates lies within 4 standard errors of the exact divergence's value."""
    from samplers import log_likelihood

    sde = make_sde(name, SHAPE)
    data = DiagonalGaussian.random(sde, seed=9)
    x = sde.from_spectral(data.mu).expand(64, *SHAPE).contiguous()
    exact, _, _ = log_likelihood(sde, data.model(sde), x[:1], solver="dopri5", rtol=1e-6, atol=1e-6)
    est, _, _ = log_likelihood(sde, data.model(sde), x, divergence="rademacher", solver="dopri5", rtol=1e-6,
                               atol=1e-6, generator=torch.Generator().manual_seed(10))  # fmt: skip
    assert abs(float(est.mean() - exact[0])) < 4 * float(est.std()) / 8 + 1e-4


@pytest.mark.parametrize("name", ["blur", "heat"])
@pytest.mark.parametrize("method, options", [("pc", {}), ("pc", {"predictor": "ancestral"}), ("ode", {})])
def test_reverse_samplers_reproduce_the_data_law_of_a_spectral_member(name, method, options):
    """Euler-Maruyama (1000 steps), ancestral (200 steps) and the probability-flow ODE (dopri5): per-coefficient
    mean and variance of 2000 samples against N(mu_k, v_k) within 4.5 standard errors plus a solver bias of 0.03."""
    sde = make_sde(name, SHAPE)
    data = DiagonalGaussian.random(sde, seed=11)
    n = 2000
    steps = {"pc": 200 if options else 1000, "ode": None}[method]
    x, _ = sample(sde, data.model(sde), (n, *SHAPE), method, steps, torch.Generator().manual_seed(12), dtype=F64,
                  **options)  # fmt: skip
    y = sde.to_spectral(x)
    z_mean = (y.mean(0) - data.mu) / (data.var / n).sqrt()
    assert float(z_mean.abs().max()) < 4.5, float(z_mean.abs().max())
    ratio = y.var(0) / data.var
    assert float((ratio - 1).abs().max()) < 4.5 * math.sqrt(2 / n) + 0.03, float((ratio - 1).abs().max())


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_the_losses_perturb_per_coefficient_and_every_prediction_gives_the_same_eps(prediction):
    """DSM's x_t = U^T (a U x_0 + s U eps) at the scales of its times; a network predicting x0, v or the score
    exactly (the Gaussian posterior per coefficient) trains on the same residual as the exact eps network."""
    from training.losses import DSMLoss

    sde = BlurSDE(SHAPE)
    data = DiagonalGaussian.random(sde, seed=13)
    x0 = sde.from_spectral(data.mu + data.var.sqrt() * torch.randn(8, *SHAPE, dtype=F64))
    x_t, t, eps = DSMLoss().perturb(sde, x0, seed=3)
    a, s = sde.spectral_scales(t)
    torch.testing.assert_close(sde.to_spectral(x_t), a * sde.to_spectral(x0) + s * sde.to_spectral(eps))
    exact_eps = data.model(sde).network

    def network(x, t):
        a, s = sde.spectral_scales(t)
        y, e = sde.to_spectral(x), sde.to_spectral(exact_eps(x, t))
        x0_hat = (y - s * e) / a
        out = {"x0": x0_hat, "v": (a * e - s * x0_hat) / (a**2 + s**2).sqrt(), "score": -e / s}[prediction]
        return sde.from_spectral(out)

    pairs = (("eps", exact_eps), (prediction, network))
    losses = [DSMLoss(prediction=p).residual(net, sde, x_t, t, eps) for p, net in pairs]
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-9)


def test_dpm2m_clips_the_data_prediction_in_pixel_space():
    """clip_x0 = c: the samples (the last data prediction) lie in [-c, c]; a bound no prediction reaches changes
    nothing (the implied eps is the model's own)."""
    sde = BlurSDE(SHAPE)
    data = DiagonalGaussian.random(sde, seed=14)
    runs = {
        c: sample(
            sde, data.model(sde), (16, *SHAPE), "dpm2m", 10, torch.Generator().manual_seed(1), dtype=F64, clip_x0=c
        )[0]  # fmt: skip
        for c in (None, 1e6, 0.5)
    }
    torch.testing.assert_close(runs[1e6], runs[None], rtol=0, atol=1e-9)
    assert float(runs[0.5].abs().max()) <= 0.5 + 1e-12 and float(runs[None].abs().max()) > 0.5
    with pytest.raises(ValueError, match="clip_x0 must be None or a positive number"):
        sample(sde, data.model(sde), (2, *SHAPE), "dpm2m", 2, clip_x0=-1.0)


def test_the_training_prediction_defaults_per_sde_reaches_the_loss_and_ncsn_keeps_its_own():
    from training import TrainConfig, loss_for

    assert (
        TrainConfig(workdir="w", sde="blur").prediction == "v"
        and TrainConfig(workdir="w", sde="heat").prediction == "v"
    )
    assert TrainConfig(workdir="w", sde="nivp").prediction == "eps"  # sde_lib.default_prediction
    assert loss_for(TrainConfig(workdir="w", prediction="v")).prediction == "v"
    assert loss_for(TrainConfig(workdir="w", loss="ddpm", prediction="x0")).prediction == "x0"
    with pytest.raises(ValueError, match="prediction must be 'eps', 'x0' or 'v'"):
        TrainConfig(workdir="w", sde="ve", loss="ncsn", prediction="x0")


def test_the_family_steps_on_the_log_snr_grid_unless_told():
    """dpm2m's default grid is the SDE's few_step_grid: "logsnr" for blur and heat, "signal" for the scalar SDEs."""
    sde = HeatSDE(SHAPE)
    data = DiagonalGaussian.random(sde, seed=15)
    runs = [sample(sde, data.model(sde), (4, *SHAPE), "dpm2m", 8, torch.Generator().manual_seed(0), dtype=F64,
                   **options)[0] for options in ({}, {"schedule": "logsnr"})]  # fmt: skip
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert BlurSDE(SHAPE).few_step_grid == "logsnr" and VPSDE(shape=SHAPE).few_step_grid == "signal"

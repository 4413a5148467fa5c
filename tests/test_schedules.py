"""sde_lib.schedules and sde_lib.quantization: the DDPM schedule, geometric noise levels, CAS (docs/math.md §8.13) and
bits/dim (docs/math.md §5, 8.14)."""

import math

import numpy as np
import pytest
import torch

from sde_lib import (
    GFFCovariance,
    cas_noise_scale,
    ddpm_schedule,
    dequantize,
    geometric_sigmas,
    largest_pairwise_distance,
    nats_to_bpd,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# ---- DDPM schedule (docs/math.md §2, 3) -----------------------------------------------------------------------------


def test_ddpm_schedule_endpoints_and_products():
    """Linear beta_t from 1e-4 to 0.02 over T = 1000; alpha = 1 - beta; abar_t = prod_{s <= t} alpha_s."""
    sched = ddpm_schedule()
    assert sched.N == 1000
    for v in (sched.betas, sched.alphas, sched.alphas_cumprod):
        assert v.dtype == torch.float64 and v.shape == (1000,)
    assert sched.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert sched.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(sched.betas.numpy()), (0.02 - 1e-4) / 999, rtol=1e-9)
    np.testing.assert_allclose(sched.alphas.numpy(), 1 - sched.betas.numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - sched.betas.numpy()), rtol=1e-12)
    # DDPM's abar_T: about 4e-5, i.e. x_T is essentially pure noise.
    assert sched.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=1e-2)


def test_ddpm_schedule_links_to_the_continuous_beta():
    """N beta_i = beta(i / (N - 1)) with beta(t) = beta_min + t (beta_max - beta_min) (docs/math.md §3)."""
    N, bmin, bmax = 250, 0.3, 12.0
    sched = ddpm_schedule(bmin, bmax, N)
    t = np.arange(N) / (N - 1)
    np.testing.assert_allclose(N * sched.betas.numpy(), bmin + t * (bmax - bmin), rtol=1e-12)


@pytest.mark.parametrize("args", [(0.1, 20.0, 0), (-0.1, 20.0, 1000), (5.0, 1.0, 1000), (0.1, 20.0, 10)])
def test_ddpm_schedule_refuses_bad_arguments(args):
    with pytest.raises(ValueError):
        ddpm_schedule(*args)


# ---- geometric noise levels (docs/math.md §4) -----------------------------------------------------------------------


def test_geometric_sigmas():
    s = geometric_sigmas(0.01, 50.0, 1000)
    assert s.dtype == torch.float64 and s.shape == (1000,)
    assert s[0].item() == pytest.approx(0.01, rel=1e-12) and s[-1].item() == pytest.approx(50.0, rel=1e-12)
    ratios = (s[1:] / s[:-1]).numpy()
    np.testing.assert_allclose(ratios, (50.0 / 0.01) ** (1 / 999), rtol=1e-10)
    assert np.all(ratios > 1)
    with pytest.raises(ValueError):
        geometric_sigmas(1.0, 0.5, 10)
    with pytest.raises(ValueError):
        geometric_sigmas(0.0, 1.0, 10)


# ---- CAS (docs/math.md §4, 8.13) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.01, 1.1, 1.5, 3.0])
@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_cas_keeps_the_next_level_variance(ratio, frac):
    """8.13: (1 - eta)^2 sigma_i^2 + beta_cas^2 sigma_{i+1}^2 = sigma_{i+1}^2, for eta in [1 - 1/r, 1)."""
    eta = (1 - 1 / ratio) + frac * (1 / ratio)
    beta = cas_noise_scale(eta, ratio)
    sigma_next = 0.37
    sigma_i = ratio * sigma_next
    assert (1 - eta) ** 2 * sigma_i**2 + beta**2 * sigma_next**2 == pytest.approx(sigma_next**2, rel=1e-12)
    assert 0.0 <= beta <= 1.0


def test_cas_edge_and_errors():
    """At eta = 1 - 1/r no fresh noise is needed (beta_cas = 0); below it CAS is impossible."""
    assert cas_noise_scale(1 - 1 / 2.0, 2.0) == pytest.approx(0.0, abs=1e-7)
    assert cas_noise_scale(0.999999, 1.5) == pytest.approx(1.0, abs=1e-5)
    for eta, ratio in [(0.2, 2.0), (0.0, 1.5), (1.0, 1.5), (0.5, 1.0), (0.5, 0.5)]:
        with pytest.raises(ValueError):
            cas_noise_scale(eta, ratio)


# ---- bits per dimension (docs/math.md §5, 8.14) ---------------------------------------------------------------------


def test_uniform_density_gives_eight_bits():
    """8.14: a model density uniform on [-1, 1]^D, log p = -D ln 2, gives bpd = 8 exactly for 256 levels."""
    D = 3 * 32 * 32
    logp = torch.full((5,), -D * math.log(2.0), dtype=torch.float64)
    np.testing.assert_allclose(nats_to_bpd(logp, D).numpy(), 8.0, rtol=0, atol=1e-12)
    # In general the uniform model costs log2(levels) bits: the Jacobian offset is log2(levels / 2).
    for levels in (2, 16, 256):
        assert nats_to_bpd(torch.tensor(-D * math.log(2.0)), D, levels).item() == pytest.approx(math.log2(levels))


def test_bpd_of_a_discrete_gaussian_model():
    """bpd = -log p_y(y) / (D ln 2) + 7 (docs/math.md §5): for a smooth density p_y, the probability of a pixel bin
    is ~ p_y(centre) * 2/256 per dim, and -log2 of it per dim is what nats_to_bpd reports."""
    D, sd = 4, 0.5
    pixels = torch.tensor([[3, 100, 128, 250]])
    y = dequantize(pixels)  # bin centres
    logp = (-0.5 * (y / sd) ** 2 - 0.5 * math.log(2 * math.pi * sd**2)).sum(-1)
    cdf = torch.distributions.Normal(0.0, sd).cdf
    mass = cdf(y + 1 / 256) - cdf(y - 1 / 256)  # probability of each pixel's bin
    exact_bits = -torch.log2(mass).sum(-1) / D
    assert nats_to_bpd(logp.double(), D).item() == pytest.approx(exact_bits.item(), abs=1e-4)


def test_dequantize():
    """y = (n + u) * 2 / L - 1: bins of width 2/L tile [-1, 1); u = 1/2 gives the bin centre."""
    n = torch.arange(256)
    np.testing.assert_allclose(dequantize(n, u=0.0).double().numpy(), n.numpy() / 128 - 1, atol=1e-7)
    np.testing.assert_allclose(dequantize(n).double().numpy(), (n.numpy() + 0.5) / 128 - 1, atol=1e-7)
    u = torch.rand(256, dtype=torch.float64)
    y = dequantize(n, u=u)
    assert y.dtype == torch.float64 and y.min().item() >= -1 and y.max().item() < 1
    np.testing.assert_array_equal(torch.floor((y + 1) * 128).long().numpy(), n.numpy())
    assert dequantize(torch.tensor([0, 1]), levels=2, u=0.0).tolist() == [-1.0, 0.0]
    with pytest.raises(TypeError, match="pixels"):
        dequantize(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="pixels"):
        dequantize(torch.tensor([256]))
    with pytest.raises(ValueError, match="levels"):
        dequantize(torch.tensor([0]), levels=1)


def test_largest_pairwise_distance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 4, 4, generator=g, dtype=torch.float64)
    cov = GFFCovariance((2, 4, 4), power=1.0)
    w, v = torch.linalg.eigh(cov.dense())
    whiten = (v * w.rsqrt()) @ v.T  # Sigma^{-1/2}, the dense matrix
    flat = x.reshape(7, -1)
    brute_white = max(float((flat[i] - flat[j]).norm()) for i in range(7) for j in range(7))
    brute = max(float((whiten @ (flat[i] - flat[j])).norm()) for i in range(7) for j in range(7))
    assert largest_pairwise_distance(x) == pytest.approx(brute_white, rel=1e-12)
    for block in (1, 3, 1024):  # row blocks, a ragged last block, one block
        assert largest_pairwise_distance(x, cov, block=block) == pytest.approx(brute, rel=1e-10)
    with pytest.raises(ValueError, match="singular|invertible"):
        largest_pairwise_distance(x, GFFCovariance((2, 4, 4), dc="zero"))
    with pytest.raises(ValueError, match="N >= 2"):
        largest_pairwise_distance(x[:1])


def test_data_sigma_max_of_the_digits():
    from training import TrainConfig
    from training.build import data_sigma_max
    from training.data import load_dataset

    digits = load_dataset("digits", split="train")
    # docs/math.md §E.8: about 9 for the digits in [-1, 1] (Euclidean, VE); GFF whitening (power 1) stretches the
    # high frequencies (eigenvalues down to 0.155), so NI-VE's distance is larger.
    ve = data_sigma_max(TrainConfig(workdir="unused", sde="ve"), digits)
    nive = data_sigma_max(TrainConfig(workdir="unused", sde="nive"), digits)
    assert ve == pytest.approx(9.0634, abs=1e-4)
    assert nive == pytest.approx(9.3574, abs=1e-4)

"""kernels: the noise rule, the torch reference against dense linear algebra, seeds, dispatch and argument errors.

The Triton kernels are compared with this reference in tests/test_kernels_triton.py (interpreter subprocess).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kernels
from kernels import noise, reference
from sde_lib.covariance import GFFCovariance, IdentityCovariance, SpectralCovariance

MASK64 = 2**64 - 1


def philox4x64_10(counter: list[int], key: list[int]) -> list[int]:
    """Philox4x64-10 from its definition (Salmon et al. 2011, Random123), in Python integers."""
    M0, M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157
    W0, W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B
    c, k = list(counter), list(key)
    for _ in range(10):
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k[0], p1 & MASK64, (p0 >> 64) ^ c[3] ^ k[1], p0 & MASK64]
        k = [(k[0] + W0) & MASK64, (k[1] + W1) & MASK64]
    return c


def normal_by_rule(seed: int, i: int, c: int, h: int, w: int, shape: tuple[int, int, int]) -> float:
    """Element (i, c, h, w) of white noise, from the rule in kernels/noise.py, in float64 Python arithmetic."""
    C, H, W = shape
    Wo = -(-W // 8)
    words = philox4x64_10([((i * C + c) * H + h) * Wo + w // 8, 0, 0, 0], [seed, 0])
    word = words[(w % 8) // 2]

    def uniform(half: int) -> float:
        x = half - 2**32 if half >= 2**31 else half  # the int32 bit pattern
        return (~x if x < 0 else x) * noise.SCALE

    u0, u1 = uniform(word & 0xFFFFFFFF), uniform(word >> 32)
    r = math.sqrt(-2.0 * math.log(max(u0, noise.CLAMP)))
    return r * (math.cos if w % 2 == 0 else math.sin)(noise.TWO_PI * u1)


def dense_power(cov, power: float) -> torch.Tensor:
    """Sigma^power from the dense matrix by eigendecomposition (float64); eigenvalues below 1e-12 * max are
    the round-off of a singular direction and count as 0."""
    evals, evecs = torch.linalg.eigh(cov.dense())
    evals = torch.where(evals > 1e-12 * evals.max(), evals, 0.0)
    return evecs @ torch.diag(evals.pow(power)) @ evecs.T


def apply_dense(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x.reshape(x.shape[0], -1) @ matrix.T).reshape(x.shape)


# ---- the noise rule --------------------------------------------------------------------------------------------
def test_philox_definition_matches_random123_known_answers():
    # Random123 kat_vectors, philox4x64 10 rounds: zero counter and key, and the pi-digits vector.
    assert philox4x64_10([0, 0, 0, 0], [0, 0]) == [
        0x16554D9ECA36314C,
        0xDB20FE9D672D0FDC,
        0xD7E772CEE186176B,
        0x7E68B68AEC7BA23B,
    ]
    pi_counter = [0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89]
    assert philox4x64_10(pi_counter, [0x452821E638D01377, 0xBE5466CF34E90C6C]) == [
        0xA528F45403E61D95,
        0x38C72DBD566E9788,
        0xA5A1610E72FD18B5,
        0x57BD43B5E52B7FE6,
    ]


@pytest.mark.parametrize("seed", [0, 12345, 2**32 + 7, 2**63 - 1])
@pytest.mark.parametrize("first", [0, 5, 2**32 - 1, 2**40 + 3])
def test_philox_stream_is_philox4x64_of_consecutive_counters(seed, first):
    words = noise.philox_words(seed, first).random_raw(12).tolist()
    expected = [w for n in range(first, first + 3) for w in philox4x64_10([n, 0, 0, 0], [seed, 0])]
    assert words == expected


@pytest.mark.parametrize("shape", [(2, 3, 8), (1, 4, 13)])
def test_white_noise_follows_the_documented_rule(shape):
    seed, B = 2**33 + 99, 3
    eps64 = noise.white_noise(seed, B, shape, torch.float64)
    eps32 = noise.white_noise(seed, B, shape, torch.float32)
    C, H, W = shape
    for i, c, h, w in [(0, 0, 0, 0), (0, 0, 0, 1), (2, C - 1, H - 1, W - 1), (1, C // 2, 1, 7), (1, 0, 2, W // 2)]:
        want = normal_by_rule(seed, i, c, h, w, shape)
        # float64 Box-Muller: libm round-off only; float32: float32 round-off of log/cos/sin (~1e-7 relative).
        assert abs(eps64[i, c, h, w].item() - want) <= 1e-13 * max(1.0, abs(want))
        assert abs(eps32[i, c, h, w].item() - want) <= 2e-6 * max(1.0, abs(want))


def test_white_noise_law_is_standard_normal():
    # 2e5 * 64 draws: mean, variance and kurtosis within ~5 standard errors; values finite and bounded by
    # the Box-Muller clamp r <= sqrt(-2 log 1e-7) = 5.68.
    eps = noise.white_noise(3, 200_000, (1, 8, 8), torch.float64).flatten()
    n = eps.numel()
    assert eps.abs().max() <= math.sqrt(-2 * math.log(noise.CLAMP)) + 1e-12
    assert abs(eps.mean().item()) < 5 / math.sqrt(n)
    assert abs(eps.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs(eps.pow(4).mean().item() - 3) < 5 * math.sqrt(96 / n)


# ---- law and reference vs dense linear algebra ---------------------------------------------------------------
def _covariance_z_scores(samples: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(C_emp - Sigma) / sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n) over the upper triangle (docs/math.md §8.6)."""
    n = samples.shape[0]
    flat = samples.reshape(n, -1)
    emp = flat.T @ flat / n
    d = torch.diagonal(sigma)
    z = (emp - sigma) / torch.sqrt((d[:, None] * d[None, :] + sigma.square()) / n)
    rows, cols = torch.triu_indices(*sigma.shape)
    return z[rows, cols]


def _hartley_basis(H: int, W: int) -> torch.Tensor:
    """Orthonormal real Fourier basis Q[k, p] = cas(2 pi (k_y p_y / H + k_x p_x / W)) / sqrt(H W), cas = cos + sin."""
    ky, kx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    phase = (ky.flatten()[:, None] * ky.flatten()[None, :]) / H + (kx.flatten()[:, None] * kx.flatten()[None, :]) / W
    angle = 2 * math.pi * phase.to(torch.float64)
    return (torch.cos(angle) + torch.sin(angle)) / math.sqrt(H * W)


def test_gff_noise_law_matches_dense_covariance():
    # docs/math.md §8.6 criterion (200k samples at 8x8: max |z| < 4.5, mean z^2 in [0.9, 1.1] over the 2080 entries),
    # for eps against I and for g against Sigma in Sigma's eigenbasis Q (real Fourier / Hartley), where
    # Q Sigma Q^T = diag(lambda). In that basis the sample-covariance entries are uncorrelated, so mean z^2 has
    # its nominal spread sqrt(2 / 2080) = 0.03. (In the pixel basis the entries of a correlated field's sample
    # covariance are themselves strongly correlated: mean z^2 then swings over 0.8-1.2 between seeds even for
    # torch.randn noise, so the criterion would not test anything there.)
    cov = GFFCovariance((1, 8, 8), power=1.0)
    Q = _hartley_basis(8, 8)
    lam = cov.eigenvalues().flatten()
    torch.testing.assert_close(Q @ Q.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q @ cov.dense() @ Q.T, torch.diag(lam), rtol=0, atol=1e-12)
    eps, g = reference.gff_noise(cov, 200_000, seed=2024, dtype=torch.float32)
    eps, g = eps.double().reshape(-1, 64), g.double().reshape(-1, 64)
    for samples, sigma in [(eps, torch.eye(64, dtype=torch.float64)), (g @ Q.T, torch.diag(lam))]:
        z = _covariance_z_scores(samples, sigma)
        assert z.abs().max() < 4.5
        assert 0.9 <= z.square().mean() <= 1.1


def _coefficients(B: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(B, generator=gen, dtype=torch.float64) + 0.25 for _ in range(3)]


@pytest.mark.parametrize("cov", [GFFCovariance((1, 8, 8), power=1.0), GFFCovariance((2, 4, 6), power=2.0, dc="zero")])
def test_reference_matches_dense_operators(cov):
    B, seed = 5, 77
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, *cov.shape, generator=gen, dtype=torch.float64)
    eps_theta = torch.randn(B, *cov.shape, generator=gen, dtype=torch.float64)
    c_x, c_eps, c_z = _coefficients(B)
    sqrt = dense_power(cov, 0.5)
    eps, g = reference.gff_noise(cov, B, seed, dtype=torch.float64)
    torch.testing.assert_close(g, apply_dense(sqrt, eps), rtol=0, atol=1e-10)

    x_t, eps_p = reference.perturb(x, c_x, c_z, cov, seed)
    assert torch.equal(eps_p, eps)  # the white noise of perturb is gff_noise's eps
    torch.testing.assert_close(x_t, c_x[:, None, None, None] * x + c_z[:, None, None, None] * g, rtol=0, atol=1e-10)

    step = reference.ni_update(x, eps_theta, c_x, c_eps, c_z, cov, seed)
    v = c_eps[:, None, None, None] * eps_theta + c_z[:, None, None, None] * eps
    torch.testing.assert_close(step, c_x[:, None, None, None] * x + apply_dense(sqrt, v), rtol=0, atol=1e-10)
    torch.testing.assert_close(step, c_x[:, None, None, None] * x + cov.sqrt_mul(v), rtol=0, atol=1e-12)

    if cov.is_singular:
        with pytest.raises(ValueError, match="singular"):
            reference.score_scale(eps_theta, c_x, cov)
    else:
        score = reference.score_scale(eps_theta, c_x, cov)
        want = -apply_dense(dense_power(cov, -0.5), eps_theta) / c_x[:, None, None, None]
        torch.testing.assert_close(score, want, rtol=0, atol=1e-9)


def test_ni_update_without_noise():
    cov = GFFCovariance((3, 8, 8))
    x, eps_theta = torch.randn(2, 2, 3, 8, 8, dtype=torch.float64)
    want = 0.5 * x + cov.sqrt_mul(-1.5 * eps_theta)
    assert torch.equal(reference.ni_update(x, eps_theta, 0.5, -1.5, 0.0, cov, None), want)
    assert torch.equal(reference.ni_update(x, eps_theta, 0.5, -1.5, torch.zeros(2), cov, 11), want)


def test_identity_covariance_is_plain_white_noise():
    cov = IdentityCovariance((2, 5, 5))
    eps, g = reference.gff_noise(cov, 4, 9, dtype=torch.float64)
    assert torch.equal(eps, g)
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    x_t, eps_p = reference.perturb(x, 0.8, 0.6, IdentityCovariance(), 9)  # shape-free identity works too
    assert torch.equal(eps_p, eps)
    torch.testing.assert_close(x_t, 0.8 * x + 0.6 * eps, rtol=0, atol=1e-15)


def test_low_precision_is_computed_in_float32():
    cov = GFFCovariance((3, 8, 8))
    x = torch.randn(4, 3, 8, 8).to(torch.bfloat16)
    a, s = torch.rand(4), torch.rand(4)
    x_t, eps = reference.perturb(x, a, s, cov, 5)
    x_t32, eps32 = reference.perturb(x.float(), a, s, cov, 5)
    assert x_t.dtype == eps.dtype == torch.bfloat16
    assert torch.equal(x_t, x_t32.to(torch.bfloat16)) and torch.equal(eps, eps32.to(torch.bfloat16))
    e16, g16 = reference.gff_noise(cov, 2, 5, dtype=torch.float16)
    e32, g32 = reference.gff_noise(cov, 2, 5, dtype=torch.float32)
    assert torch.equal(e16, e32.half()) and torch.equal(g16, g32.half())
    # float64 noise is float32 noise to float32 round-off
    e64, _ = reference.gff_noise(cov, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(e64, e32.double(), rtol=1e-6, atol=2e-6)


# ---- seeds ---------------------------------------------------------------------------------------------------
def test_seeds_reproduce_and_samples_do_not_depend_on_the_batch():
    cov = GFFCovariance((3, 8, 12), power=1.5)
    eps7, g7 = kernels.gff_noise(cov, 7, 123)
    eps1, g1 = kernels.gff_noise(cov, 1, 123)
    eps3, _ = kernels.gff_noise(cov, 3, 123)
    again, _ = kernels.gff_noise(cov, 7, 123)
    other, _ = kernels.gff_noise(cov, 7, 124)
    assert torch.equal(eps7, again)
    assert torch.equal(eps7[:1], eps1) and torch.equal(g7[:1], g1) and torch.equal(eps7[:3], eps3)
    # different seeds: independent draws, correlation ~ N(0, 1/D) per pair; D = 2016
    corr = (eps7 * other).sum() / (eps7.norm() * other.norm())
    assert abs(corr) < 5 / math.sqrt(eps7.numel())
    # samples within a batch differ from each other as well
    assert not torch.equal(eps7[0], eps7[1])


# ---- dispatch and errors -------------------------------------------------------------------------------------
def test_backend_selection(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernels.backend("cpu") == "torch"
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.backend("cpu") == "torch" and kernels.backend("cuda") == "torch"
    monkeypatch.setenv(kernels.ENV_VAR, "triton")
    assert kernels.backend("cuda") == "triton"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.backend("cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.perturb(torch.zeros(1, 1, 8, 8), 1.0, 1.0, GFFCovariance((1, 8, 8)), 0)
    monkeypatch.setenv(kernels.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=kernels.ENV_VAR):
        kernels.backend("cpu")


def test_public_functions_equal_the_reference_on_cpu():
    cov = GFFCovariance((2, 8, 8))
    x, e = torch.randn(2, 3, 2, 8, 8)
    assert torch.equal(kernels.perturb(x, 0.3, 0.7, cov, 1)[0], reference.perturb(x, 0.3, 0.7, cov, 1)[0])
    assert torch.equal(kernels.ni_update(x, e, 1.0, 0.2, 0.1, cov, 2), reference.ni_update(x, e, 1.0, 0.2, 0.1, cov, 2))
    assert torch.equal(kernels.score_scale(e, 0.5, cov), reference.score_scale(e, 0.5, cov))


def test_gradients_flow_through_the_reference():
    # score_scale is linear with a symmetric operator: d<w, -Sigma^{-1/2} e / s>/de = -Sigma^{-1/2} w / s.
    cov = GFFCovariance((1, 8, 8))
    e = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    s = torch.tensor([0.5, 2.0], dtype=torch.float64)
    (kernels.score_scale(e, s, cov) * w).sum().backward()
    want = -apply_dense(dense_power(cov, -0.5), w) / s[:, None, None, None]
    torch.testing.assert_close(e.grad, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda c, x: kernels.gff_noise("cov", 2, 0), TypeError, "cov"),
        (lambda c, x: kernels.gff_noise(IdentityCovariance(), 2, 0), ValueError, "shape"),
        (lambda c, x: kernels.gff_noise(c, -1, 0), ValueError, "n must"),
        (lambda c, x: kernels.gff_noise(c, 2, -1), ValueError, "seed"),
        (lambda c, x: kernels.gff_noise(c, 2, 2**63), ValueError, "seed"),
        (lambda c, x: kernels.gff_noise(c, 2, 1.5), TypeError, "seed"),
        (lambda c, x: kernels.gff_noise(c, 2, 0, dtype=torch.int64), TypeError, "dtype"),
        (lambda c, x: kernels.perturb(x[0], 1.0, 1.0, c, 0), ValueError, "x0"),
        (lambda c, x: kernels.perturb(x[:, :, :4], 1.0, 1.0, c, 0), ValueError, "x0"),
        (lambda c, x: kernels.perturb(x.long(), 1.0, 1.0, c, 0), TypeError, "x0"),
        (lambda c, x: kernels.perturb(x, torch.ones(3), 1.0, c, 0), ValueError, "a must"),
        (lambda c, x: kernels.perturb(x, 1.0, "s", c, 0), TypeError, "s must"),
        (lambda c, x: kernels.ni_update(x, x[:1], 1.0, 1.0, 1.0, c, 0), ValueError, "eps_theta"),
        (lambda c, x: kernels.ni_update(x, x.double(), 1.0, 1.0, 1.0, c, 0), TypeError, "eps_theta"),
        (lambda c, x: kernels.ni_update(x, x, 1.0, 1.0, 0.5, c, None), ValueError, "c_z"),
        (lambda c, x: kernels.ni_update(x, x, torch.ones(2, 1), 1.0, 0.5, c, 0), ValueError, "c_x"),
        (lambda c, x: kernels.score_scale(x, 1.0, GFFCovariance((3, 8, 8), dc="zero")), ValueError, "singular"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(GFFCovariance((3, 8, 8)), torch.zeros(2, 3, 8, 8))


def test_spectral_covariance_from_data_goes_through_the_same_path():
    # Any covariance operator works, not only GFF: a data-matched spectrum, dense check in float64.
    gen = torch.Generator().manual_seed(5)
    images = torch.cumsum(torch.randn(64, 1, 6, 6, generator=gen, dtype=torch.float64), dim=-1)
    cov = SpectralCovariance.from_data(images)
    eps, g = kernels.gff_noise(cov, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(g, apply_dense(dense_power(cov, 0.5), eps), rtol=0, atol=1e-10)
    assert np.isfinite(g.numpy()).all()


def test_spectral_update_is_the_per_coefficient_axpy_with_the_noise_rule():
    """kernels.spectral_update (docs/math.md §11) = c_y y + c_e e + c_z z elementwise, z the seed's white noise;
    coefficients broadcast from (1, C, H, W); one that does not broadcast is refused."""
    ref = reference
    g = torch.Generator().manual_seed(0)
    y, e = (torch.randn(3, 2, 4, 8, generator=g, dtype=torch.float64) for _ in range(2))
    c_y, c_e, c_z = (torch.rand(1, 2, 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    want = c_y * y + c_e * e + c_z * noise.white_noise(7, 3, (2, 4, 8), torch.float64, y.device)
    torch.testing.assert_close(ref.spectral_update(y, e, c_y, c_e, c_z, 7), want, rtol=0, atol=1e-15)
    torch.testing.assert_close(ref.spectral_update(y, e, 2.0, c_e, 0.0, None), 2 * y + c_e * e, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        ref.spectral_update(y, e, torch.ones(2, 2, 4, 8), 1.0, 0.0, None)

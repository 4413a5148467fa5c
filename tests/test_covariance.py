"""sde_lib.covariance against docs/math.md §1 and 7, and the tests of docs/math.md §8.1-8.7.

References are built here from the docs/math.md formulas with numpy / scipy (tests/spectra.py), never from
sde_lib's own FFT code: the integer fftfreq index per axis, the unitary DFT matrix applied to unit vectors,
and the full complex ifft2(lambda^a * fft2(x)).
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sde_lib import GFFCovariance, IdentityCovariance, SpectralCovariance
from tests.gaussian_oracle import covariance_zscores
from tests.spectra import dense_from_spectrum, gff_amplitude, gff_eigenvalues, integer_frequencies

pytestmark = pytest.mark.usefixtures("one_thread")

# (C, H, W): square even / odd, and non-square with even and odd sides.
SHAPES = [(1, 8, 8), (1, 7, 7), (1, 6, 10), (2, 5, 8), (1, 9, 4)]
POWERS = [0.5, 1.0, 2.0]


def op_dense(op, shape) -> np.ndarray:
    """The (D, D) matrix of a linear operator on (C, H, W) images, from its images of the unit vectors."""
    D = math.prod(shape)
    eye = torch.eye(D, dtype=torch.float64).reshape(D, *shape)
    return op(eye).reshape(D, D).T.numpy()


def expected_lambda(shape, power, dc="one") -> np.ndarray:
    C, H, W = shape
    return np.broadcast_to(gff_eigenvalues(H, W, power, dc), shape)


# ---- spectrum layout (docs/math.md §1.1-1.2) ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("dc", ["one", "zero"])
def test_eigenvalues_follow_the_integer_index_formula(shape, power, dc):
    """lambda = m^2 / mean(m^2), m = |k|^-gamma with k = fftfreq(n) * n per axis (non-square included)."""
    lam = GFFCovariance(shape, power, dc).eigenvalues()
    assert lam.dtype == torch.float64 and lam.shape == shape
    np.testing.assert_allclose(lam.numpy(), expected_lambda(shape, power, dc), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lam.mean(dim=(-2, -1)).numpy(), 1.0, atol=1e-13)


def test_frequency_layout_of_a_non_square_image():
    """(H, W) = (6, 10): lambda[i, j] depends on k_y = fftfreq(6)[i] * 6 and k_x = fftfreq(10)[j] * 10."""
    lam = GFFCovariance((1, 6, 10), power=1.0).eigenvalues()[0].numpy()
    ky, kx = integer_frequencies(6, 10)
    assert ky[3, 0] == -3 and kx[0, 5] == -5  # the Nyquist bins carry -n/2
    m2 = 1.0 / np.where(ky**2 + kx**2 > 0, ky**2 + kx**2, 1.0)
    np.testing.assert_allclose(lam, m2 / m2.mean(), rtol=1e-12)
    # The largest eigenvalue sits at DC and the |k| = 1 bins (0, +-1) and (+-1, 0); the smallest at (3, 5).
    top = lam.max()
    assert {(i, j) for i, j in zip(*np.nonzero(np.isclose(lam, top, rtol=1e-14)))} == {
        (0, 0),
        (0, 1),
        (0, 9),
        (1, 0),
        (5, 0),
    }
    assert np.unravel_index(lam.argmin(), lam.shape) == (3, 5)


# ---- reference values (docs/math.md §7) -----------------------------------------------------------------------------


def test_reference_values_8x8():
    cov = GFFCovariance((1, 8, 8), power=1.0, dc="one")
    lam = cov.eigenvalues()[0]
    assert lam.min().item() == pytest.approx(0.1546360, abs=5e-8)
    assert lam.max().item() == pytest.approx(4.9483533, abs=5e-8)
    # The maximum is shared by DC and the four |k| = 1 bins.
    assert int(torch.isclose(lam, lam.max(), rtol=1e-14).sum()) == 5
    assert lam[0, 0].item() == lam.max().item()
    assert cov.logdet().item() == pytest.approx(-31.664384, abs=5e-7)
    zero = GFFCovariance((1, 8, 8), power=1.0, dc="zero").eigenvalues()[0]
    assert zero.max().item() == pytest.approx(5.363011, abs=5e-7)
    assert zero[0, 0].item() == 0.0


@pytest.mark.parametrize("power", POWERS)
def test_condition_number_is_max_k_to_the_two_gamma(power):
    """cond(Sigma) = (max |k|)^(2 gamma) with dc="one" (docs/math.md §1.3); 8x8: max |k| = sqrt(32)."""
    lam = GFFCovariance((1, 8, 8), power=power).eigenvalues()
    assert (lam.max() / lam.min()).item() == pytest.approx(32.0**power, rel=1e-12)


@pytest.mark.parametrize(
    "power, lam_max, lam_min, cond, logdet",
    [
        (1.0, 47.203, 0.09219, 512.0, -981.248),
        (0.5, 9.319, 0.4118, 22.63, -178.508),
        (2.0, 145.94, 5.567e-4, 2.62e5, -4753.65),
    ],
)
def test_reference_values_32x32(power, lam_max, lam_min, cond, logdet):
    cov = GFFCovariance((1, 32, 32), power=power)
    lam = cov.eigenvalues()[0]
    assert lam[0, 0].item() == lam.max().item()  # lambda_DC = lambda_max
    assert lam.max().item() == pytest.approx(lam_max, rel=1e-4)
    assert lam.min().item() == pytest.approx(lam_min, rel=1e-3)
    assert (lam.max() / lam.min()).item() == pytest.approx(cond, rel=2e-3)
    assert (lam.max() / lam.min()).item() == pytest.approx(512.0**power, rel=1e-10)
    assert cov.logdet().item() == pytest.approx(logdet, abs=1e-2)
    # log det over all C*H*W dims is C times the per-channel value.
    assert GFFCovariance((3, 32, 32), power=power).logdet().item() == pytest.approx(3 * logdet, abs=3e-2)


# ---- docs/math.md §8.1-8.5 and 8.7 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("dc", ["one", "zero"])
def test_unit_diagonal(shape, power, dc):
    """8.1: diag(Sigma) = 1, i.e. unit variance per pixel."""
    dense = GFFCovariance(shape, power, dc).dense()
    np.testing.assert_allclose(torch.diagonal(dense).numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 6, 10), (1, 7, 5)])
@pytest.mark.parametrize("dc", ["one", "zero"])
def test_symmetry_and_spectrum(shape, dc):
    """8.2: dense Sigma symmetric, eigvalsh(Sigma) = sorted(lambda); min eig > 0 (dc="one") or = 0 (dc="zero")."""
    cov = GFFCovariance(shape, 1.0, dc)
    dense = cov.dense().numpy()
    assert np.abs(dense - dense.T).max() <= 1e-14
    eig = np.linalg.eigvalsh(dense)
    np.testing.assert_allclose(eig, np.sort(expected_lambda(shape, 1.0, dc).ravel()), atol=1e-12)
    if dc == "one":
        assert eig.min() > 0.1
    else:
        assert abs(eig.min()) <= 1e-12 and np.sum(np.abs(eig) <= 1e-12) == 1


@pytest.mark.parametrize("shape", [(1, 6, 10), (2, 7, 4)])
def test_dense_equals_unitary_dft_construction(shape):
    """Sigma = blockdiag_c F^H diag(lambda) F with F the unitary DFT matrix (docs/math.md §1.3); a transposed axis
    fails."""
    dense = GFFCovariance(shape, power=1.3).dense().numpy()
    np.testing.assert_allclose(dense, dense_from_spectrum(expected_lambda(shape, 1.3)), atol=1e-13)


OPS = {1.0: "mul", 0.5: "sqrt_mul", -0.5: "inv_sqrt_mul", -1.0: "inv_mul"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("a", list(OPS))
def test_ops_equal_full_complex_fft_and_are_real(shape, a):
    """8.3: ifft2(lambda^a * fft2(x)) has imaginary part ~ 0 (Nyquist symmetry); the rfft ops equal its real part."""
    cov = GFFCovariance(shape, power=1.0)
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = np.fft.ifft2(expected_lambda(shape, 1.0) ** a * np.fft.fft2(x.numpy()))
    assert np.abs(full.imag).max() <= 1e-12 * np.abs(full.real).max()
    out = getattr(cov, OPS[a])(x)
    np.testing.assert_allclose(out.numpy(), full.real, rtol=0, atol=1e-12 * np.abs(full.real).max())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 6, 10), (1, 5, 7)])
def test_stationarity(shape):
    """8.4: Sigma[p, q] = c((p - q) mod (H, W)) with c = ifft2(lambda).real (block-circulant)."""
    _, H, W = shape
    dense = GFFCovariance(shape, power=1.0).dense().numpy()
    c = np.fft.ifft2(gff_eigenvalues(H, W, 1.0)).real
    py, px = np.divmod(np.arange(H * W), W)
    ref = c[(py[:, None] - py[None, :]) % H, (px[:, None] - px[None, :]) % W]
    np.testing.assert_allclose(dense, ref, atol=1e-14)
    assert c[0, 0] == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("shape, power", [((1, 8, 8), 1.0), ((2, 5, 6), 1.5)])
def test_matrix_functions_against_scipy(shape, power):
    """8.5: Sigma^{1/2} = sqrtm, Sigma^{-1} = inv, logdet = slogdet, quad_inv = x^T inv(Sigma) x (1e-10)."""
    cov = GFFCovariance(shape, power)
    S = cov.dense().numpy()
    half = op_dense(cov.sqrt_mul, shape)
    inv_half = op_dense(cov.inv_sqrt_mul, shape)
    inv = op_dense(cov.inv_mul, shape)
    tol = dict(rtol=0, atol=1e-10)
    np.testing.assert_allclose(op_dense(cov.mul, shape), S, **tol)
    np.testing.assert_allclose(half, np.real(scipy.linalg.sqrtm(S)), **tol)
    np.testing.assert_allclose(half @ half, S, **tol)
    np.testing.assert_allclose(inv_half @ half, np.eye(S.shape[0]), **tol)
    np.testing.assert_allclose(inv, np.linalg.inv(S), **tol)
    sign, logabsdet = np.linalg.slogdet(S)
    assert sign == 1 and cov.logdet().item() == pytest.approx(logabsdet, abs=1e-10)
    assert cov.logdet().dtype == torch.float64 and cov.logdet().shape == ()
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xf = x.flatten(1).numpy()
    ref = np.einsum("bi,ij,bj->b", xf, np.linalg.inv(S), xf)
    np.testing.assert_allclose(cov.quad_inv(x).numpy(), ref, rtol=1e-10)


def test_power_zero_is_the_identity():
    """8.7: gamma = 0, dc="one" gives lambda = 1 exactly, hence Sigma = I (up to FFT round-off) and log det = 0."""
    shape = (3, 6, 7)
    cov = GFFCovariance(shape, power=0.0)
    assert torch.equal(cov.eigenvalues(), torch.ones(shape, dtype=torch.float64))
    assert cov.logdet().item() == 0.0
    np.testing.assert_allclose(cov.dense().numpy(), np.eye(math.prod(shape)), rtol=0, atol=1e-15)
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for name in OPS.values():
        np.testing.assert_allclose(getattr(cov, name)(x).numpy(), x.numpy(), rtol=0, atol=1e-14)


def test_dc_zero_is_singular():
    """dc="zero": rank D - C, zero-mean noise per channel, and the inverse operators / logdet refuse it."""
    shape = (2, 6, 6)
    cov = GFFCovariance(shape, power=1.0, dc="zero")
    assert cov.is_singular and not GFFCovariance(shape).is_singular
    eig = np.linalg.eigvalsh(cov.dense().numpy())
    assert np.sum(np.abs(eig) <= 1e-12) == 2 and eig.min() >= -1e-12
    _, g = cov.sample(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    np.testing.assert_allclose(g.mean(dim=(-2, -1)).numpy(), 0.0, atol=1e-15)
    x = torch.randn((1, *shape), dtype=torch.float64)
    for name in ("inv_mul", "inv_sqrt_mul", "quad_inv"):
        with pytest.raises(ValueError, match="singular"):
            getattr(cov, name)(x)
    with pytest.raises(ValueError, match="singular"):
        cov.logdet()


# ---- sampler law (docs/math.md §1.4, 8.6) ---------------------------------------------------------------------------

# docs/math.md §8.6 asks for 200k samples; the z-score criterion is scale-free (its null distribution does not depend
# on n), so 50k keep it just as strict at a quarter of the cost.
N_SAMPLES = 50_000


def assert_law(samples: torch.Tensor, sigma: torch.Tensor):
    """`samples` (n, D) ~ N(0, sigma), by docs/math.md §8.6's per-entry z-scores over the D (D + 1) / 2 entries.

    The 8.6 band mean z^2 in [0.9, 1.1] presumes nearly independent entries. For a correlated Sigma the entries of
    the raw estimate are strongly correlated: for GFF 8x8, gamma = 1, mean z^2 has a null std of 0.086 (measured
    over 40 seeds), so [0.9, 1.1] would be a 1.2-std band. The band is therefore applied to the whitened samples
    Sigma^{-1/2} x against I (null std 0.023, a 4-std band; Sigma^{-1/2} from scipy's sqrtm of `sigma`), and the
    raw z-scores against `sigma` get max |z| < 4.5 and mean z^2 in [0.7, 1.3] (3.5 null std).
    """
    z = covariance_zscores(samples, sigma)
    assert z.abs().max().item() < 4.5, z.abs().max().item()
    assert 0.7 <= z.square().mean().item() <= 1.3, z.square().mean().item()
    whiten = torch.from_numpy(np.linalg.inv(np.real(scipy.linalg.sqrtm(sigma.numpy()))))
    z = covariance_zscores(samples.to(torch.float64) @ whiten.T, torch.eye(sigma.shape[0], dtype=torch.float64))
    assert z.abs().max().item() < 4.5, z.abs().max().item()
    assert 0.9 <= z.square().mean().item() <= 1.1, z.square().mean().item()


def test_sampler_law_real_path():
    """(eps, g) = cov.sample(n): eps ~ N(0, I), g = Sigma^{1/2} eps ~ N(0, dense()) on 1x8x8."""
    cov = GFFCovariance((1, 8, 8), power=1.0)
    eps, g = cov.sample(N_SAMPLES, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert eps.shape == g.shape == (N_SAMPLES, 1, 8, 8)
    assert torch.equal(g, cov.sqrt_mul(eps))
    assert_law(g.flatten(1), cov.dense())
    z = covariance_zscores(eps.flatten(1), torch.eye(64, dtype=torch.float64))
    assert z.abs().max().item() < 4.5 and 0.9 <= z.square().mean().item() <= 1.1


def test_sampler_law_complex_path():
    """docs/math.md §1.4's construction sqrt(2) Re(g_raw / sigma_N), written here from the formula, has the same law."""
    H = W = 8
    m = torch.from_numpy(gff_amplitude(H, W, power=1.0))
    sigma_n = math.sqrt(2 * m.square().sum().item()) / math.sqrt(H * W)
    assert sigma_n == pytest.approx(0.635747, abs=5e-7)
    gen = torch.Generator().manual_seed(5)
    z = torch.complex(*torch.randn((2, N_SAMPLES, H, W), generator=gen, dtype=torch.float64))  # E[z z^H] = 2I
    g_raw = torch.fft.ifft2(m * torch.fft.fft2(z))
    assert g_raw.abs().square().mean().sqrt().item() == pytest.approx(sigma_n, rel=1e-3)
    g = g_raw / sigma_n
    re, im = math.sqrt(2) * g.real.reshape(N_SAMPLES, -1), math.sqrt(2) * g.imag.reshape(N_SAMPLES, -1)
    dense = GFFCovariance((1, H, W), power=1.0).dense()
    assert_law(re, dense)
    assert_law(im, dense)
    # Re and Im are independent: after whitening both, every cross-covariance entry has standard error 1 / sqrt(n).
    whiten = torch.from_numpy(np.linalg.inv(np.real(scipy.linalg.sqrtm(dense.numpy()))))
    z_cross = (re @ whiten.T).T @ (im @ whiten.T) / math.sqrt(N_SAMPLES)
    assert z_cross.abs().max().item() < 5.0 and 0.9 <= z_cross.square().mean().item() <= 1.1


# ---- SpectralCovariance -----------------------------------------------------------------------------------------


def test_spectral_normalisation_and_broadcast():
    """lambda = spectrum / mean per channel: a per-channel scale does not matter; (H, W) broadcasts to all channels."""
    H, W = 6, 9
    base = torch.from_numpy(gff_amplitude(H, W, 1.2) ** 2)
    scaled = torch.stack([base * 3.0, base * 0.01, base])
    lam = SpectralCovariance((3, H, W), scaled).eigenvalues()
    ref = SpectralCovariance((3, H, W), base).eigenvalues()
    np.testing.assert_allclose(lam.numpy(), ref.numpy(), rtol=1e-14)
    np.testing.assert_allclose(lam.mean(dim=(-2, -1)).numpy(), 1.0, atol=1e-14)
    np.testing.assert_allclose(lam.numpy(), expected_lambda((3, H, W), 1.2), rtol=1e-12)
    gff = GFFCovariance((3, H, W), 1.2)
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    np.testing.assert_allclose(SpectralCovariance((3, H, W), base).mul(x).numpy(), gff.mul(x).numpy(), atol=1e-14)


def test_spectral_per_channel_spectra_in_dense():
    """Different spectra per channel give a block-diagonal Sigma with the right block per channel."""
    H, W = 4, 5
    spectra = np.stack([gff_amplitude(H, W, p) ** 2 for p in (0.0, 1.0, 2.0)])
    cov = SpectralCovariance((3, H, W), torch.from_numpy(spectra))
    lam = spectra / spectra.mean(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(cov.dense().numpy(), dense_from_spectrum(lam), atol=1e-13)


def radial_expectation(lam: np.ndarray) -> np.ndarray:
    """The from_data rule applied to an exact spectrum: average over bins of equal round(|k|), DC := ring-1 value,
    renormalise to mean 1."""
    H, W = lam.shape
    ky, kx = integer_frequencies(H, W)
    ring = np.rint(np.sqrt(ky**2 + kx**2)).astype(int)
    out = np.empty_like(lam)
    for r in np.unique(ring):
        out[ring == r] = lam[ring == r].mean()
    out[0, 0] = lam[ring == 1].mean()
    return out / out.mean()


def test_from_data_recovers_a_known_spectrum():
    """Synthetic data ~ N(0, Sigma_GFF): from_data's radial spectrum matches the radial average of lambda.

    Each bin's power |xhat_k|^2 is an unbiased estimate of lambda_k with relative std <= sqrt(2 / n); with n = 4000
    and every ring holding >= 2 independent complex bins, the relative MC error per ring is <= 1.6%, so 5% is > 3 std.
    Without smoothing single bins have relative std <= 2.2%: 10% is > 4.5 std.
    """
    shape, n = (2, 16, 12), 4000
    cov = GFFCovariance(shape, power=1.0)
    _, images = cov.sample(n, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    images = images + 0.7  # a constant brightness offset lives in the DC bin only, which from_data replaces
    lam = cov.eigenvalues()[0].numpy()
    radial = SpectralCovariance.from_data(images).eigenvalues().numpy()
    for c in range(2):
        np.testing.assert_allclose(radial[c], radial_expectation(lam), rtol=0.05)
    raw = SpectralCovariance.from_data(images, smooth="none").eigenvalues().numpy()
    ky, kx = integer_frequencies(16, 12)
    ring1 = np.rint(np.sqrt(ky**2 + kx**2)) == 1
    for c in range(2):
        expected = lam.copy()
        expected[0, 0] = lam[ring1].mean()
        np.testing.assert_allclose(raw[c], expected / expected.mean(), rtol=0.10)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: GFFCovariance((1, 4, 4)).mul(torch.zeros(2, 1, 4, 5)), ValueError, "x"),
        (lambda: GFFCovariance((1, 4, 4)).mul(torch.zeros(4, 4)), ValueError, "x"),
        (lambda: GFFCovariance((1, 4, 4)).sqrt_mul(torch.zeros(1, 4, 4, dtype=torch.complex64)), TypeError, "x"),
        (lambda: GFFCovariance((1, 4, 4)).inv_mul(torch.zeros(1, 4, 4, dtype=torch.int64)), TypeError, "x"),
        (lambda: IdentityCovariance((1, 4, 4)).mul(torch.zeros(1, 4, 5)), ValueError, "x"),
        (lambda: GFFCovariance((1, 4, 4), power=-0.5), ValueError, "power"),
        (lambda: GFFCovariance((1, 4, 4), power=float("nan")), ValueError, "power"),
        (lambda: GFFCovariance((1, 4, 4), dc="half"), ValueError, "dc"),
        (lambda: GFFCovariance((4, 4)), ValueError, "shape"),
        (lambda: SpectralCovariance((1, 4, 4), -torch.ones(4, 4)), ValueError, "spectrum"),
        (lambda: SpectralCovariance((1, 4, 4), torch.full((4, 4), float("inf"))), ValueError, "spectrum"),
        (lambda: SpectralCovariance((1, 4, 4), torch.arange(16.0).reshape(4, 4)), ValueError, "spectrum"),
        (lambda: SpectralCovariance((1, 4, 4), torch.ones(4, 5)), ValueError, "spectrum"),
        (lambda: SpectralCovariance((1, 4, 4), torch.ones(4, 4, dtype=torch.complex128)), TypeError, "spectrum"),
        (lambda: SpectralCovariance.from_data(torch.zeros(3, 4, 4)), ValueError, "images"),
        (lambda: SpectralCovariance.from_data(torch.zeros(3, 1, 4, 4, dtype=torch.uint8)), TypeError, "images"),
        (lambda: GFFCovariance((1, 65, 64)).dense(), ValueError, "4096"),
    ],
)
def test_bad_input_is_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_asymmetric_spectrum_is_refused_but_an_even_one_is_accepted():
    """Evenness under k -> -k (mod n) is what makes Sigma real; only the odd part of a spectrum is rejected."""
    H, W = 5, 6
    rng = np.random.default_rng(7)
    s = rng.uniform(0.5, 1.5, (H, W))
    even = s + np.roll(s[::-1, ::-1], shift=(1, 1), axis=(0, 1))  # s_k + s_{-k}
    SpectralCovariance((1, H, W), torch.from_numpy(even))
    with pytest.raises(ValueError, match="spectrum"):
        SpectralCovariance((1, H, W), torch.from_numpy(s))


# ---- dtype, device, batching, autograd --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept_and_float32_agrees(dtype):
    shape = (3, 7, 6)
    cov = GFFCovariance(shape, power=1.0)
    x64 = torch.randn((2, *shape), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x = x64.to(dtype)
    for name in (*OPS.values(), "quad_inv"):
        out = getattr(cov, name)(x)
        assert out.dtype == dtype and out.device == x.device
        ref = getattr(cov, name)(x64)
        np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    eps, g = cov.sample(3, dtype=dtype)
    assert eps.dtype == g.dtype == dtype
    assert cov.dense(torch.float32).dtype == torch.float32


def test_any_leading_dims():
    shape = (1, 5, 6)
    cov = GFFCovariance(shape, power=1.5)
    x = torch.randn((2, 3, 4, *shape), dtype=torch.float64)
    for name in OPS.values():
        out = getattr(cov, name)(x)
        flat = getattr(cov, name)(x.reshape(-1, *shape)).reshape(x.shape)
        assert out.shape == x.shape
        np.testing.assert_allclose(out.numpy(), flat.numpy(), atol=1e-15)
        np.testing.assert_allclose(getattr(cov, name)(x[1, 2, 3]).numpy(), out[1, 2, 3].numpy(), atol=1e-15)
    assert cov.quad_inv(x).shape == (2, 3, 4)
    assert cov.quad_inv(x[0, 0, 0]).shape == ()


@pytest.mark.parametrize("name", [*OPS.values(), "quad_inv"])
def test_gradcheck(name):
    """Autograd through the rfft2 / irfft2 operators (odd and even sides), float64."""
    cov = GFFCovariance((1, 3, 4), power=1.0)
    x = torch.randn(1, 1, 3, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(getattr(cov, name), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cov = GFFCovariance((3, 8, 6), power=1.0)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    for name in (*OPS.values(), "quad_inv"):
        out = getattr(cov, name)(x.cuda())
        assert out.is_cuda and out.dtype == torch.float64
        np.testing.assert_allclose(out.cpu().numpy(), getattr(cov, name)(x).numpy(), atol=1e-12)
    eps, g = cov.sample(2, device="cuda")
    assert eps.is_cuda and g.is_cuda


# ---- IdentityCovariance -----------------------------------------------------------------------------------------


def test_identity_covariance():
    shape = (3, 5, 4)
    cov = IdentityCovariance(shape)
    x = torch.randn((2, *shape), dtype=torch.float32)
    for name in OPS.values():
        assert torch.equal(getattr(cov, name)(x), x)
    assert cov.logdet().item() == 0.0 and cov.logdet().dtype == torch.float64
    assert torch.equal(cov.quad_inv(x), x.square().sum(dim=(-3, -2, -1)))
    assert torch.equal(cov.eigenvalues(), torch.ones(shape, dtype=torch.float64))
    assert torch.equal(cov.dense(), torch.eye(60, dtype=torch.float64))
    eps, g = cov.sample(4)
    assert torch.equal(eps, g)
    assert not cov.is_singular
    free = IdentityCovariance()  # no shape: any (..., C, H, W)
    y = torch.randn(7, 2, 3, 9)
    assert torch.equal(free.inv_sqrt_mul(y), y) and free.quad_inv(y).shape == (7,)
    with pytest.raises(ValueError):
        free.dense()


# ---- property tests ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    C=st.sampled_from([1, 3]),
    H=st.integers(2, 16),
    W=st.integers(2, 16),
    power=st.floats(0.0, 2.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_operator_properties(C, H, W, power, dtype, seed):
    """Sigma^{1/2} Sigma^{-1/2} x = x, Sigma^{-1} Sigma x = x, Sigma^{1/2} Sigma^{1/2} x = Sigma x,
    <x, Sigma y> = <Sigma x, y>, mean lambda = 1, quad_inv = <x, Sigma^{-1} x>, logdet = sum log eig(dense).

    Round-off bound: an op pair of total condition number kappa loses about eps * kappa (times log-size FFT
    factors) relative to max |x|; the tolerance is 200 eps kappa.
    """
    shape = (C, H, W)
    cov = GFFCovariance(shape, power)
    lam = cov.eigenvalues()
    np.testing.assert_allclose(lam.mean(dim=(-2, -1)).numpy(), 1.0, atol=1e-12)
    cond = (lam.max() / lam.min()).item()
    eps = torch.finfo(dtype).eps
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn((2, 2, *shape), generator=gen, dtype=dtype)
    scale = x.abs().max().item()

    def close(a, b, kappa):
        assert a.dtype == dtype
        assert (a - b).abs().max().item() <= 200 * eps * kappa * scale

    close(cov.sqrt_mul(cov.inv_sqrt_mul(x)), x, math.sqrt(cond))
    close(cov.inv_mul(cov.mul(x)), x, cond)
    close(cov.sqrt_mul(cov.sqrt_mul(x)), cov.mul(x), lam.max().item())
    lhs, rhs = (x * cov.mul(y)).sum(), (cov.mul(x) * y).sum()
    assert abs((lhs - rhs).item()) <= 200 * eps * lam.max().item() * x.numel() ** 0.5 * scale**2
    q = cov.quad_inv(x)
    q_ref = (x * cov.inv_mul(x)).sum(dim=(-3, -2, -1))
    assert q.shape == (2,) and torch.allclose(q, q_ref, rtol=200 * eps * cond)
    if dtype == torch.float64 and C * H * W <= 400:  # a dense eigendecomposition, kept small
        eig = np.linalg.eigvalsh(cov.dense().numpy())
        assert cov.logdet().item() == pytest.approx(np.log(eig).sum(), rel=1e-9, abs=1e-9)

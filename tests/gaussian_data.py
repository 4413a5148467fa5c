"""Analytic Gaussian references for tests: GFF spectra from the MATH.md formulas, and Gaussian data N(m, S).

Everything here is written from MATH.md with numpy / dense linear algebra, independently of sde_lib, so that
tests can compare sde_lib's FFT operators and SDE methods against it.

For data x_0 ~ N(m, S) and a forward process x_t = a x_0 + std Sigma^{1/2} z (MATH.md 3, 4):

    p_t = N(a m, C_t),  C_t = a^2 S + std^2 Sigma,
    grad log p_t(x) = -C_t^{-1} (x - a m),
    E[x_0 | x_t] = m + a S C_t^{-1} (x_t - a m)       (Gaussian conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def integer_frequencies(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """(k_y, k_x) integer fft indices, each of shape (H, W): fftfreq(n) * n per axis (MATH.md 1.1)."""
    ky = np.fft.fftfreq(H) * H
    kx = np.fft.fftfreq(W) * W
    return np.meshgrid(ky, kx, indexing="ij")


def gff_amplitude(H: int, W: int, power: float, dc: str = "one") -> np.ndarray:
    """m_k = |k|^{-power} with |k| the Euclidean norm of the integer index; m_0 = 1 (dc="one") or 0 (MATH.md 1.1)."""
    ky, kx = integer_frequencies(H, W)
    knorm = np.sqrt(ky**2 + kx**2)
    amp = np.ones((H, W))
    amp[knorm > 0] = knorm[knorm > 0] ** (-power)
    amp[0, 0] = {"one": 1.0, "zero": 0.0}[dc]
    return amp


def gff_eigenvalues(H: int, W: int, power: float, dc: str = "one") -> np.ndarray:
    """lambda_k = m_k^2 / mean(m^2), shape (H, W), unshifted fft order (MATH.md 1.2)."""
    m2 = gff_amplitude(H, W, power, dc) ** 2
    return m2 / m2.mean()


def unitary_dft_matrix(H: int, W: int) -> np.ndarray:
    """F, the (HW, HW) unitary 2-D DFT on row-major (H, W) images, built from the DFT of unit vectors."""
    FH = np.fft.fft(np.eye(H), axis=0, norm="ortho")
    FW = np.fft.fft(np.eye(W), axis=0, norm="ortho")
    return np.kron(FH, FW)


def dense_from_spectrum(lam: np.ndarray) -> np.ndarray:
    """Sigma = blockdiag_c(F^H diag(lambda_c) F) for lam of shape (C, H, W) (MATH.md 0, 1.3): real, (CHW, CHW)."""
    C, H, W = lam.shape
    F = unitary_dft_matrix(H, W)
    blocks = [F.conj().T @ np.diag(lam[c].ravel()) @ F for c in range(C)]
    out = np.zeros((C * H * W, C * H * W), dtype=complex)
    for c, block in enumerate(blocks):
        out[c * H * W : (c + 1) * H * W, c * H * W : (c + 1) * H * W] = block
    assert np.abs(out.imag).max() <= 1e-12 * np.abs(out.real).max()
    return out.real


def random_spd(D: int, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    """A random dense SPD (D, D) float64 matrix with eigenvalues in [0.1, 1.1] * scale (generic: no symmetry)."""
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    eig = 0.1 + torch.rand(D, generator=generator, dtype=torch.float64)
    return scale * (q * eig) @ q.T


@dataclass
class GaussianData:
    """Data x_0 ~ N(mean, cov) on images of `shape` (C, H, W); mean (C, H, W), cov dense (D, D), float64."""

    mean: Tensor
    cov: Tensor

    @classmethod
    def random(cls, shape: tuple[int, int, int], generator: torch.Generator) -> GaussianData:
        D = int(np.prod(shape))
        mean = torch.randn(shape, generator=generator, dtype=torch.float64)
        return cls(mean, random_spd(D, generator))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def marginal_cov(self, a: float, std: float, sigma: Tensor) -> Tensor:
        """C_t = a^2 S + std^2 Sigma for the dense noise covariance `sigma`."""
        return a**2 * self.cov + std**2 * sigma

    def score(self, x: Tensor, a: float, std: float, sigma: Tensor) -> Tensor:
        """grad log p_t(x) = -C_t^{-1}(x - a m) for x of shape (B, C, H, W)."""
        r = (x - a * self.mean).flatten(1)
        s = -torch.linalg.solve(self.marginal_cov(a, std, sigma), r.T).T
        return s.reshape(x.shape)

    def posterior_mean(self, x: Tensor, a: float, std: float, sigma: Tensor) -> Tensor:
        """E[x_0 | x_t = x] = m + a S C_t^{-1}(x - a m) for x of shape (B, C, H, W)."""
        r = (x - a * self.mean).flatten(1)
        w = torch.linalg.solve(self.marginal_cov(a, std, sigma), r.T)
        return self.mean + (a * self.cov @ w).T.reshape(x.shape)


def covariance_zscores(samples: Tensor, target: Tensor, mean: Tensor | None = None) -> Tensor:
    """Per-entry z-scores of the empirical covariance of `samples` (n, D) against `target` (D, D) (MATH.md 8.6).

    z_ij = (C_emp,ij - Sigma_ij) / sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n), the Gaussian-sample standard error,
    over the D (D + 1) / 2 entries i <= j. `mean` (D,) is the known mean (zero if None); it is not re-estimated.
    A correct sampler gives max |z| < 4.5 and mean z^2 near 1; the criterion is scale-free.
    """
    x = samples.to(torch.float64)
    if mean is not None:
        x = x - mean.to(torch.float64)
    n, D = x.shape
    emp = x.T @ x / n
    d = torch.diagonal(target)
    se = torch.sqrt((d[:, None] * d[None, :] + target**2) / n)
    iu = torch.triu_indices(D, D)
    return ((emp - target) / se)[iu[0], iu[1]]

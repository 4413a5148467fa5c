"""Independent references for GFF noise: the spectra and dense covariances of docs/math.md §0-1, with numpy.

Everything here is written from docs/math.md with numpy / dense linear algebra, independently of sde_lib, so that
tests can compare sde_lib's FFT operators against it: the integer fftfreq index per axis, the GFF amplitude and
eigenvalues, the unitary DFT matrix built from unit vectors, and the dense block-diagonal Sigma of a spectrum.
Data with exact scores (Gaussians, mixtures) and the statistics of samples are in tests/gaussian_oracle.py.
"""

from __future__ import annotations

import numpy as np


def integer_frequencies(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """(k_y, k_x) integer fft indices, each of shape (H, W): fftfreq(n) * n per axis (docs/math.md §1.1)."""
    ky = np.fft.fftfreq(H) * H
    kx = np.fft.fftfreq(W) * W
    return np.meshgrid(ky, kx, indexing="ij")


def gff_amplitude(H: int, W: int, power: float, dc: str = "one") -> np.ndarray:
    """m_k = |k|^{-power} with |k| the Euclidean norm of the integer index; m_0 = 1 (dc="one") or 0
    (docs/math.md §1.1)."""
    ky, kx = integer_frequencies(H, W)
    knorm = np.sqrt(ky**2 + kx**2)
    amp = np.ones((H, W))
    amp[knorm > 0] = knorm[knorm > 0] ** (-power)
    amp[0, 0] = {"one": 1.0, "zero": 0.0}[dc]
    return amp


def gff_eigenvalues(H: int, W: int, power: float, dc: str = "one") -> np.ndarray:
    """lambda_k = m_k^2 / mean(m^2), shape (H, W), unshifted fft order (docs/math.md §1.2)."""
    m2 = gff_amplitude(H, W, power, dc) ** 2
    return m2 / m2.mean()


def unitary_dft_matrix(H: int, W: int) -> np.ndarray:
    """F, the (HW, HW) unitary 2-D DFT on row-major (H, W) images, built from the DFT of unit vectors."""
    FH = np.fft.fft(np.eye(H), axis=0, norm="ortho")
    FW = np.fft.fft(np.eye(W), axis=0, norm="ortho")
    return np.kron(FH, FW)


def dense_from_spectrum(lam: np.ndarray) -> np.ndarray:
    """Sigma = blockdiag_c(F^H diag(lambda_c) F) for lam of shape (C, H, W) (docs/math.md §0, 1.3): real, (CHW, CHW)."""
    C, H, W = lam.shape
    F = unitary_dft_matrix(H, W)
    blocks = [F.conj().T @ np.diag(lam[c].ravel()) @ F for c in range(C)]
    out = np.zeros((C * H * W, C * H * W), dtype=complex)
    for c, block in enumerate(blocks):
        out[c * H * W : (c + 1) * H * W, c * H * W : (c + 1) * H * W] = block
    assert np.abs(out.imag).max() <= 1e-12 * np.abs(out.real).max()
    return out.real

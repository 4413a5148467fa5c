"""Stationary Gaussian noise covariances, diagonal in the 2-D Fourier basis (docs/math.md §1).

A covariance Sigma over images x in R^{C x H x W} acts per channel as

    Sigma^a x = ifft2(lambda^a * fft2(x)).real                      (docs/math.md §1.3)

where lambda (shape (C, H, W), unshifted fft order, even under k -> -k) is its spectrum, normalised
so that mean_k lambda_k = 1 per channel, i.e. unit variance per pixel (docs/math.md §1.2). Because lambda is
even, the real FFT (rfft2 / irfft2) computes the same operator at half the cost; that is what is used.

This is the one seam through which "non-isotropic" enters nidiff: SDEs, samplers, losses and
likelihoods only call these operators and never ask whether the noise is isotropic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Covariance", "IdentityCovariance", "SpectralCovariance", "GFFCovariance", "frequency_norm"]

MAX_DENSE_DIM = 4096


def _check_shape(shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    return shape


def frequency_norm(H: int, W: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """|k| = sqrt(k_y^2 + k_x^2) per Fourier bin, with integer indices k = fftfreq(n) * n (docs/math.md §1.1).

    Shape (H, W), unshifted fft order; even under k -> -k (mod n), Nyquist bins included.
    """
    ky = torch.fft.fftfreq(H, dtype=dtype) * H
    kx = torch.fft.fftfreq(W, dtype=dtype) * W
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


class Covariance:
    """Interface of a noise covariance Sigma on (C, H, W) images.

    All operators take x of shape (..., C, H, W), real floating point, and keep its dtype and device;
    they are differentiable. Subclasses implement `_power(x, a)` = Sigma^a x.
    """

    shape: tuple[int, int, int] | None

    # ---- the operators -------------------------------------------------------------------
    def mul(self, x: Tensor) -> Tensor:
        """Sigma x."""
        return self._power(self._check_input(x), 1.0)

    def inv_mul(self, x: Tensor) -> Tensor:
        """Sigma^{-1} x (raises ValueError for a singular Sigma)."""
        self._require_invertible("inv_mul")
        return self._power(self._check_input(x), -1.0)

    def sqrt_mul(self, x: Tensor) -> Tensor:
        """Sigma^{1/2} x, with the symmetric PSD square root."""
        return self._power(self._check_input(x), 0.5)

    def inv_sqrt_mul(self, x: Tensor) -> Tensor:
        """Sigma^{-1/2} x (raises ValueError for a singular Sigma)."""
        self._require_invertible("inv_sqrt_mul")
        return self._power(self._check_input(x), -0.5)

    def quad_inv(self, x: Tensor) -> Tensor:
        """x^T Sigma^{-1} x per leading index = ||Sigma^{-1/2} x||^2, shape x.shape[:-3] (docs/math.md §1.3)."""
        return self.inv_sqrt_mul(x).square().sum(dim=(-3, -2, -1))

    def logdet(self) -> Tensor:
        """log det Sigma over all C*H*W dimensions = sum_{c,k} log lambda_{c,k}; float64 scalar (docs/math.md §1.3)."""
        self._require_invertible("logdet")
        return self.eigenvalues().log().sum()

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """n samples: white eps ~ N(0, I), shape (n, C, H, W), and g = Sigma^{1/2} eps ~ N(0, Sigma)
        (docs/math.md §1.4)."""
        if self.shape is None:
            raise ValueError("sample() needs a covariance with a known shape; construct it with shape=(C, H, W)")
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if device is None and generator is not None:
            device = generator.device
        eps = torch.randn((int(n), *self.shape), generator=generator, device=device, dtype=dtype)
        return eps, self.sqrt_mul(eps)

    def dense(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The (D, D) matrix of Sigma, row-major over (C, H, W); D = C*H*W must be <= 4096."""
        if self.shape is None:
            raise ValueError("dense() needs a covariance with a known shape")
        D = math.prod(self.shape)
        if D > MAX_DENSE_DIM:
            raise ValueError(f"dense() refuses D = {D} > {MAX_DENSE_DIM} (a {D}x{D} matrix); use the operators")
        eye = torch.eye(D, dtype=dtype).reshape(D, *self.shape)
        # Sigma is symmetric, so the images of the unit vectors are its rows as well as its columns.
        return self.mul(eye).reshape(D, D)

    def eigenvalues(self) -> Tensor:
        """lambda per Fourier bin, shape (C, H, W), float64, mean 1 per channel."""
        raise NotImplementedError

    # ---- the eigenbasis --------------------------------------------------------------------
    def to_basis(self, x: Tensor) -> Tensor:
        """Coefficients of x (..., C, H, W) in an orthonormal real eigenbasis of Sigma, same shape (docs/math.md §1.3).

        Coefficient (c, u, v) has eigenvalue `basis_eigenvalues()[c, u, v]`. Spectral covariances use the 2-D
        Hartley transform Hx = Re(F x) - Im(F x), F the unitary 2-D DFT; it is its own inverse.
        """
        x = self._check_input(x)
        f = torch.fft.fft2(x if x.dtype in (torch.float32, torch.float64) else x.float(), norm="ortho")
        return (f.real - f.imag).to(x.dtype)

    def from_basis(self, y: Tensor) -> Tensor:
        """The image whose `to_basis` coefficients are y (the inverse, here the same, orthonormal map)."""
        return self.to_basis(y)

    def basis_eigenvalues(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The eigenvalue of each `to_basis` coefficient, broadcastable against (B, C, H, W)."""
        return self.eigenvalues().to(device=device, dtype=dtype)

    # ---- helpers -------------------------------------------------------------------------
    @property
    def is_singular(self) -> bool:
        return False

    def _power(self, x: Tensor, a: float) -> Tensor:
        raise NotImplementedError

    def _require_invertible(self, op: str) -> None:
        if self.is_singular:
            raise ValueError(
                f"{op}: this covariance is singular (a zero eigenvalue, e.g. dc='zero' freezes the image mean), "
                "so Sigma^-1, Sigma^-1/2 and log det Sigma do not exist"
            )

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex() or not x.is_floating_point():
            raise TypeError(f"x must be a real floating-point tensor, got dtype {x.dtype}")
        if self.shape is not None and tuple(x.shape[-3:]) != self.shape:
            raise ValueError(f"x must have trailing shape (C, H, W) = {self.shape}, got {tuple(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


class IdentityCovariance(Covariance):
    """Sigma = I: isotropic noise. Every operator is the identity and log det = 0, with no FFT.

    `shape=None` gives an operator that accepts any trailing shape (dense()/sample() then need a shape).
    """

    def __init__(self, shape: Sequence[int] | None = None):
        self.shape = _check_shape(shape)

    def _power(self, x: Tensor, a: float) -> Tensor:
        return x

    def _check_input(self, x: Tensor) -> Tensor:
        x = super()._check_input(x)
        if x.dim() < 3:
            raise ValueError(f"x must have shape (..., C, H, W), got {tuple(x.shape)}")
        return x

    def eigenvalues(self) -> Tensor:
        if self.shape is None:
            raise ValueError("eigenvalues() needs a covariance with a known shape")
        return torch.ones(self.shape, dtype=torch.float64)

    def logdet(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def quad_inv(self, x: Tensor) -> Tensor:
        return self._check_input(x).square().sum(dim=(-3, -2, -1))

    def to_basis(self, x: Tensor) -> Tensor:
        """Every orthonormal basis diagonalises Sigma = I: the pixel basis, with no transform."""
        return self._check_input(x)

    def basis_eigenvalues(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        return torch.ones((), dtype=dtype, device=device)


class SpectralCovariance(Covariance):
    """Sigma = F^H diag(lambda) F per channel, for any stationary power spectrum (docs/math.md §1.3).

    `spectrum` is the POWER spectrum (eigenvalues up to scale, not an amplitude filter), shape (H, W) or
    (C, H, W), in unshifted fft order, non-negative, finite and even under k -> -k (mod n). It is
    normalised to lambda = spectrum / mean(spectrum) per channel, so diag(Sigma) = 1 (docs/math.md §1.2).
    A spectrum with zero entries gives a singular (PSD) Sigma: inverse operators and logdet refuse it.
    """

    def __init__(self, shape: Sequence[int], spectrum: Tensor):
        self.shape = _check_shape(shape)
        if self.shape is None:
            raise ValueError("SpectralCovariance needs shape=(C, H, W)")
        C, H, W = self.shape
        if not isinstance(spectrum, Tensor):
            spectrum = torch.as_tensor(spectrum)
        if spectrum.is_complex() or not (spectrum.is_floating_point() or spectrum.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"spectrum must be a real tensor, got dtype {spectrum.dtype}")
        spectrum = spectrum.detach().to(device="cpu", dtype=torch.float64)
        if spectrum.shape == (H, W):
            spectrum = spectrum.expand(C, H, W)
        if spectrum.shape != (C, H, W):
            raise ValueError(
                f"spectrum must have shape (H, W) = {(H, W)} or (C, H, W) = {self.shape}, got {tuple(spectrum.shape)}"
            )
        if not torch.isfinite(spectrum).all():
            raise ValueError("spectrum must be finite")
        if (spectrum < 0).any():
            raise ValueError("spectrum must be non-negative (it is a power spectrum: the eigenvalues of Sigma)")
        mirrored = torch.roll(spectrum.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))  # s[(-i) % H, (-j) % W]
        if not torch.allclose(spectrum, mirrored, rtol=1e-6, atol=1e-12 * float(spectrum.abs().max())):
            raise ValueError("spectrum must be even under k -> -k (mod H, W) so that Sigma is real and symmetric")
        means = spectrum.mean(dim=(-2, -1), keepdim=True)
        if (means <= 0).any():
            raise ValueError("spectrum must have a positive mean in every channel")
        self._lam = (spectrum / means).contiguous()
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def from_data(cls, images: Tensor, smooth: str = "radial", floor: float = 1e-4) -> SpectralCovariance:
        """Data-matched noise: the average power spectrum of a dataset `images` (N, C, H, W).

        P_c(k) = mean_n |fft2(x_{n,c} - mean_{n,c}, norm="ortho")(k)|^2, each image centred per channel.
        `smooth="radial"` averages P over bins with the same rounded |k| (docs/math.md §1.1); `"none"` keeps it
        as is. The DC bin (which centring empties) takes the value of the |k| = 1 ring, the rule of
        GFF dc="one"; entries below `floor` * mean are raised to it so that Sigma stays positive definite.
        """
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (scaled data), got {images.dtype}")
        if images.shape[0] < 1:
            raise ValueError("images must hold at least one image")
        if smooth not in ("radial", "none"):
            raise ValueError(f"smooth must be 'radial' or 'none', got {smooth!r}")
        x = images.detach().to(torch.float64)
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        power = torch.fft.fft2(x, norm="ortho").abs().square().mean(dim=0)  # (C, H, W)
        H, W = power.shape[-2:]
        ring = torch.round(frequency_norm(H, W)).long()
        if smooth == "radial":
            flat = ring.flatten()
            counts = torch.bincount(flat).clamp_min(1).to(torch.float64)
            sums = torch.stack([torch.bincount(flat, weights=p.flatten()) for p in power])
            power = (sums / counts)[:, flat].reshape(power.shape)
        ring1 = power[:, ring == 1].mean(dim=-1) if (ring == 1).any() else power.mean(dim=(-2, -1))
        power[:, 0, 0] = ring1
        power = torch.maximum(power, floor * power.mean(dim=(-2, -1), keepdim=True))
        return cls(tuple(images.shape[1:]), power)

    def eigenvalues(self) -> Tensor:
        return self._lam.clone()

    @property
    def is_singular(self) -> bool:
        return bool((self._lam == 0).any())

    def _multiplier(self, a: float, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (a, dtype, device)
        if key not in self._cache:
            W = self.shape[-1]
            half = self._lam[..., : W // 2 + 1]
            m = half.pow(a) if a > 0 else torch.where(half > 0, half, torch.inf).pow(a)
            real = torch.float64 if dtype == torch.float64 else torch.float32
            self._cache[key] = m.to(device=device, dtype=real)
        return self._cache[key]

    def _power(self, x: Tensor, a: float) -> Tensor:
        H, W = self.shape[-2:]
        compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
        spec = torch.fft.rfft2(compute) * self._multiplier(a, compute.dtype, compute.device)
        return torch.fft.irfft2(spec, s=(H, W)).to(x.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


class GFFCovariance(SpectralCovariance):
    """Gaussian Free Field noise (docs/math.md §1.1-1.2): amplitude m_k = |k|^{-power}, lambda = m^2 / mean(m^2).

    |k| is the Euclidean norm of the integer fft index. The DC bin has m_0 = 1 for dc="one" (positive
    definite; default) or m_0 = 0 for dc="zero" (singular: zero-mean noise, an ablation). power = 0 with
    dc="one" is exactly the identity; power = 1 is the discrete GFF (power spectrum ~ 1/|k|^2).
    """

    def __init__(self, shape: Sequence[int], power: float = 1.0, dc: str = "one"):
        shape = _check_shape(shape)
        if shape is None:
            raise ValueError("GFFCovariance needs shape=(C, H, W)")
        power = float(power)
        if not math.isfinite(power) or power < 0:
            raise ValueError(f"power must be a finite number >= 0, got {power}")
        if dc not in ("one", "zero"):
            raise ValueError(f"dc must be 'one' or 'zero', got {dc!r}")
        knorm = frequency_norm(shape[1], shape[2])
        amp = torch.where(knorm > 0, knorm, 1.0).pow(-power)
        amp[0, 0] = 1.0 if dc == "one" else 0.0
        if shape[1] * shape[2] == 1 and dc == "zero":
            raise ValueError("dc='zero' on a 1x1 image leaves no noise at all")
        super().__init__(shape, amp.square())
        self.power = power
        self.dc = dc

    def __repr__(self) -> str:
        return f"GFFCovariance(shape={self.shape}, power={self.power}, dc={self.dc!r})"

"""Argument checks shared by the torch reference and the Triton kernels (clear errors naming the argument)."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from kernels.noise import check_seed
from sde_lib.covariance import Covariance

__all__ = [
    "FLOAT_DTYPES",
    "compute_dtype",
    "check_cov",
    "check_images",
    "check_like",
    "coefficient",
    "noise_request",
    "noise_seed",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic precision for a tensor dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_cov(cov: object) -> Covariance:
    if not isinstance(cov, Covariance):
        raise TypeError(f"cov must be a sde_lib.covariance.Covariance, got {type(cov).__name__}")
    return cov


def noise_request(
    cov: object, n: object, seed: object, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[Covariance, tuple[int, int, int], int, int, torch.device, torch.dtype]:
    """Checked gff_noise arguments: (cov, (C, H, W), n, seed, device, dtype), with torch's default device/dtype."""
    cov = check_cov(cov)
    if cov.shape is None:
        raise ValueError("cov has no shape: gff_noise needs a covariance built with shape=(C, H, W)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    device = torch.get_default_device() if device is None else torch.device(device)
    return cov, cov.shape, n, check_seed(seed), device, dtype


def noise_seed(seed: object, c_z: object) -> int | None:
    """The seed of ni_update's noise, or None when there is no noise term: seed=None (then c_z must be zero) or
    c_z the number 0. A tensor c_z is not inspected (zeros there multiply the noise to exactly zero)."""
    if seed is None:
        if not (bool((c_z == 0).all()) if isinstance(c_z, Tensor) else c_z == 0):
            raise ValueError("seed=None means a step without noise, so c_z must be zero")
        return None
    seed = check_seed(seed)
    return None if not isinstance(c_z, Tensor) and c_z == 0 else seed


def check_images(x: object, cov: Covariance, name: str) -> Tensor:
    """A real floating (B, C, H, W) tensor whose (C, H, W) matches cov.shape (when the covariance has one)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if cov.shape is not None and tuple(x.shape[1:]) != cov.shape:
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, cov.shape))}), got {tuple(x.shape)}")
    return x


def check_like(y: object, x: Tensor, name: str, like: str) -> Tensor:
    """`y` has the shape, dtype and device of `x` (named `like` in the message)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.shape != x.shape:
        raise ValueError(f"{name} must have the shape of {like} {tuple(x.shape)}, got {tuple(y.shape)}")
    if y.dtype != x.dtype or y.device != x.device:
        raise TypeError(
            f"{name} must have the dtype and device of {like} ({x.dtype}, {x.device}), got {y.dtype}, {y.device}"
        )
    return y


def coefficient(c: object, batch: int, dtype: torch.dtype, device: torch.device, name: str) -> Tensor:
    """A per-sample coefficient as a (B,) tensor of `dtype` on `device`: a real number, a 0-d or a (B,) tensor."""
    if isinstance(c, Tensor):
        if c.is_complex() or c.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {c.dtype}")
        if c.dim() > 1 or (c.dim() == 1 and c.shape[0] != batch):
            raise ValueError(f"{name} must be a number, a 0-d tensor or have shape ({batch},), got {tuple(c.shape)}")
        return c.to(device=device, dtype=dtype).expand(batch)
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"{name} must be a real number or a tensor, got {type(c).__name__}")
    return torch.full((batch,), float(c), dtype=dtype, device=device)


def coefficient_field(c: object, x: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """A per-coefficient coefficient as a contiguous tensor of x's shape: a real number or a tensor that
    broadcasts to x (e.g. (1, C, H, W) or (B, C, H, W))."""
    if isinstance(c, Tensor):
        if c.is_complex() or c.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {c.dtype}")
        try:
            return c.to(device=x.device, dtype=dtype).expand(x.shape).contiguous()
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(c.shape)} does not broadcast to {tuple(x.shape)}") from None
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"{name} must be a real number or a tensor, got {type(c).__name__}")
    return torch.full(x.shape, float(c), dtype=dtype, device=x.device)

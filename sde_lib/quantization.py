"""Discrete pixels <-> model space, and bits per dimension (docs/math.md §5).

Integer pixels n in {0, .., L-1}^D with L = `levels` grey levels map to y = (n + u) * 2/L - 1 in [-1, 1)^D,
bin width 2/L, with u ~ U[0, 1)^D (uniform dequantisation; u = 1/2 evaluates at the bin centre). The
Jacobian of y -> n + u is (2/L)^D, so a density p_y in model space gives

    bpd = -log p_y(y) / (D ln 2) + log2(L / 2)       (= ... + 7 for L = 256, docs/math.md §5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["dequantize", "nats_to_bpd"]


def dequantize(pixels: Tensor, levels: int = 256, u: Tensor | float | None = 0.5) -> Tensor:
    """y = (n + u) * 2 / levels - 1 for integer pixels n in [0, levels); `u` a tensor like pixels or a scalar."""
    if int(levels) < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if pixels.is_floating_point() or pixels.is_complex():
        raise TypeError(f"pixels must be an integer tensor of grey levels, got dtype {pixels.dtype}")
    if pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) >= levels):
        raise ValueError(f"pixels must lie in [0, {levels - 1}], got range [{int(pixels.min())}, {int(pixels.max())}]")
    if u is None:
        u = 0.5
    return (pixels.to(torch.get_default_dtype() if not isinstance(u, Tensor) else u.dtype) + u) * (2.0 / levels) - 1.0


def nats_to_bpd(logp: Tensor, D: int, levels: int = 256) -> Tensor:
    """Bits per dimension of discrete data from the model-space log-density `logp` (nats) of its dequantised value."""
    return -logp / (D * math.log(2.0)) + math.log2(levels / 2)

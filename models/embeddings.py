"""Embeddings of continuous time t in [0, 1] for the U-Net's conditioning."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_embedding", "GaussianFourierEmbedding"]


def sinusoidal_embedding(s: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """DDPM's sinusoidal embedding of a (B,) float tensor s, shape (B, dim), in s's dtype:

        [sin(s w_0), .., sin(s w_{h-1}), cos(s w_0), .., cos(s w_{h-1})],  w_j = max_period^(-j / (h - 1)),

    h = dim // 2 (a zero column is appended when dim is odd). The U-Net passes s = time_scale * t, so that
    t = i / (N - 1) reproduces DDPM's embedding of the step index up to the factor time_scale / (N - 1).
    """
    if dim < 4:
        raise ValueError(f"dim must be >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=s.device, dtype=s.dtype) / (half - 1))
    args = s[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features [sin(2 pi s w), cos(2 pi s w)] with fixed w ~ N(0, scale^2 I_{dim/2}) (score_sde).

    w is drawn from torch's global generator at construction and stored as a (persistent) buffer, not a parameter.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be even and >= 2, got {dim}")
        self.register_buffer("w", torch.randn(dim // 2) * scale)

    def forward(self, s: Tensor) -> Tensor:
        """(B,) -> (B, dim), in s's dtype."""
        args = 2 * math.pi * s[:, None] * self.w.to(s.dtype)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

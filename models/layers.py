"""U-Net building blocks (DDPM / DDPM++): residual block, self-attention, down- and up-sampling.

Initialisation follows DDPM: weights are Xavier-uniform (variance scaling, fan_avg), biases zero, and the last
layer of every residual branch is zero, so that each block starts as the identity (or its 1x1 shortcut).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["conv", "linear", "ResBlock", "AttnBlock", "Downsample", "Upsample"]


def _init(layer: nn.Conv2d | nn.Linear, zero: bool = False) -> nn.Conv2d | nn.Linear:
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def conv(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    """A 'same'-padded conv (1x1 or 3x3) with DDPM initialisation (all-zero if `zero`)."""
    return _init(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2), zero)


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A dense layer with DDPM initialisation."""
    return _init(nn.Linear(in_dim, out_dim))


class ResBlock(nn.Module):
    """h = conv(drop(act(norm(conv(act(norm(x))) + dense(act(temb)))))); out = (skip(x) + h) [/ sqrt 2].

    skip is the identity when in_ch = out_ch, else a 1x1 conv. temb_dim = None: no time input.
    """

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float, num_groups: int, skip_rescale: bool
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_ch, eps=1e-6)
        self.conv1 = conv(in_ch, out_ch)
        self.temb = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm2 = nn.GroupNorm(num_groups, out_ch, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, zero=True)
        self.skip = conv(in_ch, out_ch, kernel=1) if in_ch != out_ch else nn.Identity()
        self.out_scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * self.out_scale


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions: out = (x + W_o softmax(q k^T / sqrt(C)) v) [/ sqrt 2]."""

    def __init__(self, ch: int, num_groups: int, skip_rescale: bool):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, ch, eps=1e-6)
        self.qkv = conv(ch, 3 * ch, kernel=1)
        self.proj = conv(ch, ch, kernel=1, zero=True)
        self.out_scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        # q, k, v: (B, heads=1, HW, C) with unit stride along C. 4-D inputs with a contiguous last dimension let
        # CUDA pick a fused (flash / memory-efficient) kernel; 3-D ones fall back to the math kernel.
        qkv = self.qkv(self.norm(x)).reshape(B, 3, 1, C, H * W).transpose(-1, -2).contiguous()
        q, k, v = qkv.unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        h = self.proj(h.squeeze(1).transpose(1, 2).reshape(B, C, H, W))
        return (x + h) * self.out_scale


class Downsample(nn.Module):
    """Halve the resolution: stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.op = conv(ch, ch, stride=2) if with_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then a 3x3 conv if `with_conv`."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = conv(ch, ch) if with_conv else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

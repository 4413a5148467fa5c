"""The eps-predicting U-Net (DDPM / DDPM++ class) shared by every SDE (docs/math.md §2-4).

eps_theta(x, t) predicts the *white* noise eps of x_t = a(t) x_0 + std(t) Sigma^{1/2} eps (docs/math.md §2, 3); the
covariance is applied outside the network, so one network class serves isotropic and non-isotropic SDEs.
Time is continuous, t in [0, 1]; discrete NI-DDPM training passes t = i / (N - 1) for the step index i.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import UNetConfig
from .embeddings import GaussianFourierEmbedding, sinusoidal_embedding
from .layers import AttnBlock, Downsample, ResBlock, Upsample, conv, linear

__all__ = ["UNet"]


class _Stage(nn.ModuleList):
    """Layers applied in sequence, each called as layer(h, temb)."""

    def forward(self, h: Tensor, temb: Tensor | None) -> Tensor:
        for layer in self:
            h = layer(h, temb)
        return h


class UNet(nn.Module):
    """DDPM U-Net: levels of residual blocks (+ self-attention at `attn_resolutions`) with down-sampling, a middle
    block (res, attention, res), and a mirrored up path whose blocks take the concatenated skip activations.

    forward(x, t): x (B, C, H, W), t (B,) float in [0, 1] (a 0-d t is broadcast) -> eps_theta (B, C, H, W).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = c = config
        temb_dim = 4 * c.ch if c.conditional else None
        if c.conditional:
            self.fourier = GaussianFourierEmbedding(c.ch, c.fourier_scale) if c.embedding == "fourier" else None
            self.temb = nn.Sequential(linear(c.ch, temb_dim), nn.SiLU(), linear(temb_dim, temb_dim))
        block = partial(
            ResBlock, temb_dim=temb_dim, dropout=c.dropout, num_groups=c.num_groups, skip_rescale=c.skip_rescale
        )
        attn = partial(AttnBlock, num_groups=c.num_groups, skip_rescale=c.skip_rescale)
        last = len(c.ch_mult) - 1

        self.conv_in = conv(c.image_shape[0], c.ch)
        ch, skip_chs = c.ch, [c.ch]
        self.down = nn.ModuleList()
        for level, (mult, res) in enumerate(zip(c.ch_mult, c.resolutions)):
            for _ in range(c.num_res_blocks):
                stage = _Stage([block(ch, c.ch * mult)])
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    stage.append(attn(ch))
                self.down.append(stage)
                skip_chs.append(ch)
            if level != last:
                self.down.append(_Stage([Downsample(ch, c.resample_with_conv)]))
                skip_chs.append(ch)
        self.mid = _Stage([block(ch, ch), attn(ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for level, (mult, res) in reversed(list(enumerate(zip(c.ch_mult, c.resolutions)))):
            for i in range(c.num_res_blocks + 1):
                stage = _Stage([block(ch + skip_chs.pop(), c.ch * mult)])
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    stage.append(attn(ch))
                if i == c.num_res_blocks and level != 0:
                    stage.append(Upsample(ch, c.resample_with_conv))
                self.up.append(stage)
        self.norm_out = nn.GroupNorm(c.num_groups, ch, eps=1e-6)
        self.conv_out = conv(ch, c.image_shape[0], zero=True)

    def time_embedding(self, t: Tensor) -> Tensor:
        """(B,) -> (B, 4 ch): MLP(sinusoidal(time_scale * t)) or MLP(fourier(t))."""
        c = self.config
        dtype = torch.promote_types(self.temb[0].weight.dtype, torch.float32)  # float32, or float64 for a double net
        t = t.to(dtype)
        emb = self.fourier(t) if self.fourier is not None else sinusoidal_embedding(c.time_scale * t, c.ch)
        return self.temb(emb.to(self.temb[0].weight.dtype))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """eps_theta(x, t) for images x (B, C, H, W) and continuous times t (B,) in [0, 1]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.config.image_shape))}), got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            raise TypeError(f"t must be continuous time in [0, 1] (a float tensor), got {t.dtype}; pass i / (N - 1)")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        temb = self.time_embedding(t) if self.config.conditional else None

        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, temb)
            hs.append(h)
        h = self.mid(h, temb)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))

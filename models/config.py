"""U-Net configurations: the `UNetConfig` dataclass and the named configs `digits`, `cifar10`, `tiny`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["EMBEDDINGS", "UNetConfig", "MODEL_CONFIGS"]

EMBEDDINGS = ("sinusoidal", "fourier")


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the eps-predicting U-Net (models.unet.UNet).

    image_shape        (C, H, W) of the images, H = W.
    ch                 base channel count; level i has ch * ch_mult[i] channels at resolution H / 2^i.
    num_res_blocks     residual blocks per level on the way down (num_res_blocks + 1 on the way up).
    attn_resolutions   resolutions (side length) at which every residual block is followed by self-attention.
    dropout            dropout probability inside the residual blocks.
    embedding          "sinusoidal": sin/cos of time_scale * t (DDPM); "fourier": Gaussian random Fourier
                       features of t with frequencies ~ N(0, fourier_scale^2) (score_sde).
    resample_with_conv down-sampling by a stride-2 3x3 conv (else 2x2 average pooling); up-sampling is nearest
                       neighbour followed by a 3x3 conv (else nothing).
    skip_rescale       divide every residual sum by sqrt(2) (DDPM++).
    conditional        use the time embedding; False gives a network u(x) of the image alone
                       (NCSN form, docs/math.md §4).
    num_groups         GroupNorm groups; must divide every channel count.
    """

    image_shape: tuple[int, int, int]
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    embedding: str = "sinusoidal"
    time_scale: float = 1000.0
    fourier_scale: float = 16.0
    resample_with_conv: bool = True
    skip_rescale: bool = False
    conditional: bool = True
    num_groups: int = 32

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: store tuples so that configs compare equal.
        for name in ("image_shape", "ch_mult", "attn_resolutions"):
            try:
                object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
            except TypeError as err:
                raise TypeError(f"{name} must be a sequence of integers, got {getattr(self, name)!r}") from err
        _, H, _ = self._checked_shape()
        if self.ch < 1 or not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch and ch_mult must be positive, got ch={self.ch}, ch_mult={self.ch_mult}")
        if self.conditional and (self.ch < 4 or self.ch % 2):
            raise ValueError(f"ch must be even and >= 4 (the time embedding has ch features), got {self.ch}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.time_scale <= 0 or self.fourier_scale <= 0:
            raise ValueError(f"time_scale and fourier_scale must be > 0, got {self.time_scale}, {self.fourier_scale}")
        if H % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(
                f"image side {H} must be divisible by 2^(len(ch_mult) - 1) = {2 ** (len(self.ch_mult) - 1)}"
            )
        unused = sorted(set(self.attn_resolutions) - set(self.resolutions))
        if unused:
            raise ValueError(f"attn_resolutions {unused} are not among the U-Net's resolutions {self.resolutions}")
        bad = [self.ch * m for m in (1, *self.ch_mult) if (self.ch * m) % max(self.num_groups, 1)]
        if self.num_groups < 1 or bad:
            raise ValueError(f"num_groups={self.num_groups} must divide every channel count, not {bad}")

    def _checked_shape(self) -> tuple[int, int, int]:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}")
        C, H, W = self.image_shape
        if H != W:
            raise ValueError(f"image_shape must be square (H = W), got {self.image_shape}")
        return C, H, W

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Side length at each level: H / 2^i."""
        return tuple(self.image_shape[1] // 2**i for i in range(len(self.ch_mult)))

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict; `UNetConfig(**d)` rebuilds an equal config."""
        return dataclasses.asdict(self)


MODEL_CONFIGS: dict[str, UNetConfig] = {
    # The DDPM CIFAR-10 network (Ho et al. 2020): 35.7M parameters.
    "cifar10": UNetConfig(image_shape=(3, 32, 32)),
    # 8x8 grey digits: levels 8x8 (32 ch), 4x4 and 2x2 (64 ch), attention at 4x4; 1.1M parameters and
    # 16 MMAC per image forward, so that a batch of 128 trains in about 0.1 s on 2 CPU cores (benchmarks/).
    "digits": UNetConfig(
        image_shape=(1, 8, 8),
        ch=32,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,  # no dropout: the main job's short schedule (benchmarks/RESULTS.md, main job levers)
        skip_rescale=True,
        num_groups=16,
    ),
    # Tests: 11.6k parameters, every kind of layer present.
    "tiny": UNetConfig(
        image_shape=(1, 8, 8),
        ch=4,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        num_groups=2,
    ),
}

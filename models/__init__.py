"""Score networks: the eps-predicting U-Net and its named configurations (docs/math.md §2-4)."""

from __future__ import annotations

import dataclasses

from .config import EMBEDDINGS, MODEL_CONFIGS, UNetConfig
from .unet import UNet

__all__ = ["EMBEDDINGS", "MODEL_CONFIGS", "UNetConfig", "UNet", "create_model", "count_parameters"]


def create_model(name: str, **overrides) -> UNet:
    """The U-Net of the named config in MODEL_CONFIGS, with fields replaced by `overrides` (e.g. dropout=0.0)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown UNetConfig field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    return UNet(dataclasses.replace(MODEL_CONFIGS[name], **overrides))


def count_parameters(model: UNet) -> int:
    """Number of trainable parameters (buffers such as Fourier frequencies excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""Model-space images <-> 8-bit PNG files (pillow), the format clean-fid reads.

Model space is [-1, 1]; a pixel value x maps to round((x + 1) / 2 * 255), clamped to 0..255, and back
as p / 255 * 2 - 1. Single-channel images are written as greyscale PNGs.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

__all__ = ["to_uint8", "save_png_folder", "save_grid"]


def _check_images(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (N, C, H, W) tensor with C in (1, 3), got {getattr(x, 'shape', type(x))}")
    return x


def to_uint8(x: Tensor) -> Tensor:
    """round((x + 1) / 2 * 255) clamped to [0, 255], dtype uint8, same shape (N, C, H, W)."""
    x = _check_images(x).detach().float()
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _to_pil(img: Tensor) -> Image.Image:
    arr = img.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, mode="L" if arr.shape[-1] == 1 else "RGB")


def save_png_folder(x: Tensor, folder: str | pathlib.Path, start: int = 0) -> list[pathlib.Path]:
    """Write images x (N, C, H, W) in [-1, 1] as `folder`/{start + i:06d}.png; returns the paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(to_uint8(x)):
        path = folder / f"{start + i:06d}.png"
        _to_pil(img).save(path)
        paths.append(path)
    return paths


def save_grid(x: Tensor, path: str | pathlib.Path, nrow: int | None = None, upscale: int = 1) -> pathlib.Path:
    """Write images x (N, C, H, W) in [-1, 1] as one PNG grid (torchvision make_grid, 1-pixel padding).

    `nrow` images per row (default: ceil(sqrt(N))); `upscale` repeats each pixel (nearest) for viewing.
    """
    x = _check_images(x)
    if int(upscale) < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    nrow = int(nrow) if nrow else int(np.ceil(np.sqrt(len(x))))
    grid = make_grid(to_uint8(x), nrow=nrow, padding=1, pad_value=128)[: x.shape[1]]
    grid = grid.repeat_interleave(int(upscale), dim=-2).repeat_interleave(int(upscale), dim=-1)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(grid).save(path)
    return path

"""Model-space images <-> 8-bit PNG files (pillow), the format clean-fid reads.

Model space is [-1, 1]; a pixel value x maps to round((x + 1) / 2 * 255), clamped to 0..255, and back
as p / 255 * 2 - 1. Single-channel images are written as greyscale PNGs.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["to_uint8", "save_png_folder", "save_grid", "save_samples_npz", "render_rows"]


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
    from torchvision.utils import make_grid  # imported on first use: torchvision takes seconds to import

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


def save_samples_npz(x: Tensor, path: str | pathlib.Path) -> pathlib.Path:
    """Write images x (N, C, H, W) in [-1, 1] as an .npz with key `samples`: uint8, N x H x W x C (the layout
    score_sde_pytorch writes and most FID tools read)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, samples=to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
    return path


def render_rows(
    rows: list[tuple[str, Tensor]], path: str | pathlib.Path, cell: int, label_width: int = 230
) -> pathlib.Path:
    """One labelled row of images per (label, images) entry; images in [-1, 1] are upscaled (nearest) to cells of
    `cell` pixels."""
    pad = 4
    count = max(len(images) for _, images in rows)
    width = label_width + count * (cell + pad) + pad
    canvas = Image.new("RGB", (width, len(rows) * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), label, fill=(0, 0, 0))
        factor = max(1, cell // images.shape[-1])
        pixels = to_uint8(images).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        for i, img in enumerate(pixels):
            arr = img.expand(3, -1, -1).permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(arr, mode="RGB"), (label_width + pad + i * (cell + pad), y))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path

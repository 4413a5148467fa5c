"""The data set type every loader returns, and the error bad data raises (training.data)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SPLITS", "DataError", "ImageDataset"]

SPLITS = ("train", "test")


class DataError(ValueError):
    """Bad data: a malformed, unreadable or refused file, or a folder without images. The message is one line (any
    line breaks of a wrapped library error are folded) naming the file or folder, so a command line can print it as
    is; run.py prints every ValueError as `run.py <command>: error: <message>`."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ImageDataset(Dataset):
    """Integer images `pixels` (N, C, H, W) uint8 in 0..levels-1, served as float32 (C, H, W) bin centres in
    [-1, 1] (module docstring). flip=True mirrors each served image left-right with probability 1/2, drawn from
    torch's global generator (so seeds and saved RNG states reproduce it). `labels` (N,) int64 or None."""

    def __init__(self, pixels: Tensor, levels: int, labels: Tensor | None = None, flip: bool = False):
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError(f"pixels must be a uint8 tensor (N, C, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        if len(pixels) and int(pixels.max()) >= levels:
            raise ValueError(f"pixels must lie in 0..{levels - 1}, got a maximum of {int(pixels.max())}")
        if labels is not None and labels.shape != (len(pixels),):
            raise ValueError(f"labels must have shape ({len(pixels)},), got {tuple(labels.shape)}")
        self.pixels, self.levels, self.labels, self.flip = pixels, int(levels), labels, bool(flip)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.pixels.shape[1:])

    def __len__(self) -> int:
        return len(self.pixels)

    def _to_float(self, pixels: Tensor) -> Tensor:
        """x = (n + 1/2) * 2 / L - 1 = sde_lib.dequantize(n, L, u=1/2), without its per-call range check."""
        return pixels.float() * (2.0 / self.levels) + (1.0 / self.levels - 1.0)

    def __getitem__(self, index: int) -> Tensor:
        x = self._to_float(self.pixels[index])
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    def images(self) -> Tensor:
        """All images (N, C, H, W) float32 in [-1, 1], unflipped."""
        return self._to_float(self.pixels)

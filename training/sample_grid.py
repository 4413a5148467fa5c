"""The periodic sample grid of a training run: EMA-weight samples saved as one PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from sde_lib import SDE

from .losses import DiffusionLoss, score_fn_for

__all__ = ["save_sample_grid"]


@torch.no_grad()
def save_sample_grid(
    model: nn.Module,
    sde: SDE,
    loss: str | DiffusionLoss,
    path: str | Path,
    count: int = 64,
    method: str | None = None,
    steps: int = 100,
    seed: int = 0,
) -> Tensor:
    """Draw `count` samples with samplers.sample (score of `model` under `loss`) and save them as a square grid PNG.

    Images in [-1, 1] are clipped and mapped to [0, 1]; the generator is seeded with `seed`, so grids of one run
    at different steps start from the same noise. method=None uses the sampler's default method. Returns the
    grid image written, (3, H', W') float in [0, 1] on the CPU (grey images are repeated over 3 channels).
    """
    from torchvision.utils import make_grid, save_image  # the grid's writer: only runs that draw grids need it

    from samplers import sample

    device = next(model.parameters()).device
    shape = (int(count), *model.config.image_shape)
    generator = torch.Generator(device).manual_seed(int(seed))
    kwargs = {"steps": int(steps), "generator": generator, "device": device}
    if method is not None:
        kwargs["method"] = method
    was_training = model.training
    model.eval()
    try:
        x, _ = sample(sde, score_fn_for(model, sde, loss), shape, **kwargs)
    finally:
        model.train(was_training)
    grid = make_grid(
        x.float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=math.ceil(math.sqrt(count)), padding=1, pad_value=0.5
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid

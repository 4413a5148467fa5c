"""Drawing a command's samples: batches through samplers.sample_batches, stopped cleanly by an interrupt."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

import samplers
from sde_lib import SDE
from training import TrainConfig, loss_for, score_fn_for

from .common import Interrupted, interruptible
from .config import Config

__all__ = ["draw"]


def draw(
    model: nn.Module, sde: SDE, run: TrainConfig, cfg: Config, progress: bool = True
) -> tuple[Tensor, float, str | None]:
    """(samples on the CPU, mean score evaluations per sampler call, the signal that stopped it or None).

    cfg.sampling says how (method, steps, options) and how many (num_samples in batches of batch_size); SIGINT or
    SIGTERM stops after the batches already drawn, which are returned.
    """
    s = cfg.sampling
    batches, nfes, stopped = [], [], None
    with interruptible():
        try:
            for x, nfe in samplers.sample_batches(
                sde, score_fn_for(model, sde, loss_for(run)), tuple(model.config.image_shape), s.num_samples,
                s.batch_size, s.method, s.steps, cfg.seed, cfg.device, s.options, progress,
            ):  # fmt: skip
                batches.append(x)
                nfes.append(nfe)
        except Interrupted as err:
            stopped = err.signal_name
    shape = (0, *model.config.image_shape)
    x = torch.cat(batches) if batches else torch.zeros(shape)
    return x, float(np.mean(nfes)) if nfes else 0.0, stopped

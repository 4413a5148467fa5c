"""Drawing a command's samples: batches through samplers.sample_batches, shared out over torchrun ranks and
stopped cleanly by an interrupt."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import samplers
from sde_lib import SDE
from training import TrainConfig, loss_for, score_fn_for
from training.distributed import DistContext

from .common import Interrupted, interruptible
from .config import Config
from .ranks import SINGLE, gather_batches, my_batches

__all__ = ["draw"]


def draw(
    model: nn.Module, sde: SDE, run: TrainConfig, cfg: Config, ctx: DistContext = SINGLE, progress: bool = True
) -> tuple[Tensor | None, float, str | None]:
    """(samples on the CPU, mean score evaluations per sampler call, the signal that stopped it or None).

    cfg.sampling says how (method, steps, options) and how many (num_samples in batches of batch_size); each rank
    draws its share of the batches (nidiff_cli.ranks) and rank 0 gets all of them in order (other ranks: None).
    SIGINT or SIGTERM stops after the batches already drawn, which are kept.
    """
    s = cfg.sampling
    count = -(-s.num_samples // s.batch_size)
    mine, stopped = [], None
    with interruptible():
        try:
            for j, x, nfe in samplers.sample_batches(
                sde, score_fn_for(model, sde, loss_for(run)), tuple(model.config.image_shape), s.num_samples,
                s.batch_size, s.method, s.steps, cfg.seed, cfg.device, s.options, progress and ctx.is_main,
                batches=my_batches(count, ctx),
            ):  # fmt: skip
                mine.append((j, (x, nfe)))
        except Interrupted as err:
            stopped = err.signal_name
    batches = gather_batches(ctx, mine)
    if batches is None:
        return None, 0.0, stopped
    x = torch.cat([b for b, _ in batches]) if batches else torch.zeros((0, *model.config.image_shape))
    nfe = sum(n for _, n in batches) / len(batches) if batches else 0.0
    return x, nfe, stopped

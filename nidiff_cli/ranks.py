"""Several processes (torchrun): each rank takes whole batches r, r + K, r + 2K, ... and rank 0 gathers.

A batch's randomness depends only on (seed, batch index) (samplers.batch_seed), so with the same batch size the
result is the same as one process's: bitwise on CPU (gloo). Rank 0 alone writes files, prints and shows progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from training.distributed import DistContext, setup_distributed, teardown_distributed

from .config import Config

__all__ = ["processes", "my_batches", "gather_batches", "SINGLE"]

SINGLE = DistContext(0, 1, 0, None, owns_group=False)  # type: ignore[arg-type]


@contextlib.contextmanager
def processes(cfg: Config) -> Iterator[DistContext]:
    """The process group of a torchrun launch (a single process otherwise); cfg.device becomes this rank's device
    (cuda:LOCAL_RANK under torchrun on GPUs)."""
    ctx = setup_distributed(cfg.device)
    cfg.device = str(ctx.device)
    try:
        yield ctx
    finally:
        teardown_distributed(ctx)


def my_batches(n_batches: int, ctx: DistContext) -> range:
    """The global batch indices this rank evaluates: rank, rank + K, ... (K = world size)."""
    return range(ctx.rank, n_batches, ctx.world_size)


def gather_batches(ctx: DistContext, items: list[tuple[int, object]]) -> list[object] | None:
    """Rank 0: every rank's (batch index, value) pairs merged in batch order, as a list of values; other ranks: None."""
    if not ctx.distributed:
        return [value for _, value in sorted(items, key=lambda item: item[0])]
    received: list | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(items, received, dst=0)
    if not ctx.is_main:
        return None
    merged = [item for part in received for item in part]
    return [value for _, value in sorted(merged, key=lambda item: item[0])]

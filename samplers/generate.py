"""Many samples in batches: the loop a command line or a study runs around `samplers.sample`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from sde_lib import SDE

from .common import ScoreFn
from .progress import progress as progress_bar
from .seeds import batch_seed

__all__ = ["sample_batches", "batch_seed"]


@torch.no_grad()
def sample_batches(
    sde: SDE,
    score_fn: ScoreFn,
    image_shape: tuple[int, int, int],
    n: int,
    batch_size: int,
    method: str,
    steps: int | None,
    seed: int,
    device: torch.device | str = "cpu",
    options: dict | None = None,
    progress: bool = True,
    batches: Iterable[int] | None = None,
) -> Iterator[tuple[int, Tensor, int]]:
    """Yield (batch index, samples of the batch as float32 on the CPU, its number of score evaluations) for the
    global batches `batches` (default: all, ceil(n / batch_size) of them) of n samples in batches of batch_size.

    Batch j holds samples j * batch_size ... and draws its noise from a generator seeded with batch_seed(seed, j),
    so a sample depends on (seed, its index, batch_size) only, whichever process draws it; stopping the iteration
    early (an interrupt) keeps the batches already yielded.
    """
    from . import sample

    count = -(-n // batch_size)
    batches = range(count) if batches is None else list(batches)
    total = sum(min(batch_size, n - j * batch_size) for j in batches)
    bar = progress_bar(total=total, desc=f"sampling {method}", unit="img", disable=not progress, leave=False)
    try:
        for j in batches:
            b = min(batch_size, n - j * batch_size)
            generator = torch.Generator(device).manual_seed(batch_seed(seed, j))
            x, nfe = sample(sde, score_fn, (b, *image_shape), method, steps, generator, False, device, None,
                            **(options or {}))  # fmt: skip
            bar.update(b)
            yield j, x.float().cpu(), nfe
    finally:
        bar.close()

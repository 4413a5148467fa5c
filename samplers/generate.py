"""Many samples in batches: the loop a command line or a study runs around `samplers.sample`."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from sde_lib import SDE

from .common import ScoreFn

__all__ = ["sample_batches"]


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
) -> Iterator[tuple[Tensor, int]]:
    """Yield (samples of one batch as float32 on the CPU, its number of score evaluations) until n are drawn.

    One generator, seeded once with `seed`, draws every batch's noise, so a run is reproducible; stopping the
    iteration early (an interrupt) keeps the batches already yielded.
    """
    from . import sample

    generator = torch.Generator(device).manual_seed(seed)
    bar = progress(total=n, desc=f"sampling {method}", unit="img", disable=not progress, leave=False)
    try:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x, nfe = sample(sde, score_fn, (b, *image_shape), method, steps, generator, False, device, None,
                            **(options or {}))  # fmt: skip
            bar.update(b)
            yield x.float().cpu(), nfe
    finally:
        bar.close()

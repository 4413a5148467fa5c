"""Seeds derived on the host: a run's or a batch's randomness from (seed, index) alone."""

from __future__ import annotations

import numpy as np

__all__ = ["batch_seed"]


def batch_seed(seed: int, index: int) -> int:
    """The seed of global batch `index` of a run seeded with `seed`: `seed` itself for batch 0, else a 63-bit hash
    of (seed, index) (numpy SeedSequence). A batch's randomness thus depends on (seed, batch index) alone, whichever
    process draws it."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)

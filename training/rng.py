"""Seeds and random-number-generator states (torch, CUDA, numpy, python) in checkpointable form."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["derive_seed", "seed_everything", "capture_rng_state", "restore_rng_state"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a fixed function of integer keys, e.g. (base seed, step, rank) (numpy SeedSequence)."""
    if any(int(k) < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and all CUDA devices), numpy's global generator and python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global generator is what third-party code draws from)
    random.seed(seed)


def capture_rng_state(device: torch.device) -> dict:
    """The global RNG states as tensors and builtins, readable by torch.load(weights_only=True).

    numpy's MT19937 state and python's `random` state are converted to int64 tensors plus scalars;
    the CUDA state is that of `device` when it is a CUDA device, else None.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (saving the global generator)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss_next},
    }


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Inverse of capture_rng_state."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))

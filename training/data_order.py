"""A resumable batch order over a map-style dataset, split over DDP ranks by DistributedSampler."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["BatchOrder"]


class BatchOrder:
    """Batches of `batch` indices for one rank: epoch e visits the DistributedSampler(shuffle, seed, drop_last)
    permutation of epoch e in consecutive chunks, so the order is a function of (seed, epoch, position).

    `state_dict()` = {"seed", "epoch", "position"} (position = batches already taken in this epoch) is all a
    checkpoint needs to continue with the very next batch.
    """

    def __init__(self, dataset: Dataset, batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.dataset = dataset
        self.batch = int(batch)
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed), drop_last=True
        )
        self.batches_per_epoch = len(self.sampler) // self.batch
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the dataset ({len(dataset)} images) holds fewer than one batch of {self.batch} per rank "
                f"over {world_size} rank(s); lower batch_size"
            )
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._order: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(iter(self.sampler))
        return self._order

    def next_indices(self) -> list[int]:
        """Dataset indices of the next batch (starting a new epoch when this one is used up)."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        start = self.position * self.batch
        self.position += 1
        return self._epoch_order()[start : start + self.batch]

    def next_batch(self) -> Tensor:
        """The next batch as a (batch, C, H, W) tensor."""
        return torch.stack([torch.as_tensor(self.dataset[i]) for i in self.next_indices()])

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the seed must match (it defines the order)."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"data-order seed {state['seed']} of the checkpoint differs from this run's {self.seed}")
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None

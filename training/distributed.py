"""torch.distributed set-up for DDP training launched by torchrun (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup_distributed", "teardown_distributed", "any_rank", "mean_over_ranks", "all_gather"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among world_size processes and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistContext:
    """A single process unless torchrun launched several (WORLD_SIZE > 1) or a process group already exists.

    Under torchrun the default process group is initialised from the env:// variables it sets (MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE), with nccl when `device` is CUDA and gloo otherwise; each rank then
    trains on cuda:LOCAL_RANK.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not dist.is_initialized():
        return DistContext(0, 1, 0, dev, owns_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=owns)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if setup_distributed created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(ctx: DistContext, flags: list[bool]) -> list[bool]:
    """Each flag true on every rank if it is true on any rank (one all-reduce MAX)."""
    if not ctx.distributed:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [v > 0 for v in t.tolist()]


def mean_over_ranks(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise mean of a list of floats over all ranks."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64 if ctx.device.type == "cpu" else torch.float32, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / ctx.world_size).tolist()


def all_gather(ctx: DistContext, obj: object) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (torch.distributed.all_gather_object)."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out

"""torch.distributed set-up for DDP training launched by torchrun (gloo on CPU, nccl on CUDA).

Restarts (`torchrun --max-restarts=N`): torchrun's agent serves the workers' key-value store (MASTER_ADDR:MASTER_PORT,
TORCHELASTIC_USE_AGENT_STORE=True) and keeps that same store across restarts of the worker group, and
init_process_group writes its keys (each rank's gloo address, NCCL's unique id) under names that do not change
between starts. A restarted rank could then read the address of a dead rank of the previous start and fail
("Gloo connectFullMesh failed ... Connection refused") or wait on it. So each start of the group first agrees on a
key prefix that no earlier start used (`_fresh_prefix`) and creates its process group under it. The restart count
cannot serve as that prefix: each node's agent counts its own restarts (a node whose workers did not fail restarts
them without counting).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

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
    MASTER_PORT, RANK, WORLD_SIZE), under a key prefix fresh to this start of the group, with nccl when `device`
    is CUDA and gloo otherwise; each rank then trains on cuda:LOCAL_RANK.
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
        store, rank, world_size = next(dist.rendezvous("env://", timeout=default_pg_timeout))
        prefix = _fresh_prefix(store, rank, world_size, default_pg_timeout)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            store=dist.PrefixStore(prefix, store),
            rank=rank,
            world_size=world_size,
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=owns)


def _fresh_prefix(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> str:
    """A key prefix of `store` that every rank of this start of the group returns and no earlier start used.

    Each process draws a number no other process of the store's life drew (an atomic counter) and publishes it
    under its rank. Rank 0 publishes the roster of the numbers it reads; a rank accepts the first roster that holds
    its own number (an older roster cannot: its writer never saw that number) and acknowledges it with rank 0's
    number; rank 0 republishes until every rank has acknowledged its number. The prefix holds rank 0's number.
    """
    mine = str(store.add("nidiff/starts", 1))
    store.set(f"nidiff/start/{rank}", mine)
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        if rank == 0:
            roster = [mine] + [store.get(f"nidiff/start/{r}").decode() for r in range(1, world_size)]
            store.set("nidiff/roster", ",".join(roster))
            acks = [f"nidiff/ack/{r}" for r in range(1, world_size)]
            if all(store.check([key]) and store.get(key).decode() == mine for key in acks):
                return f"nidiff/{mine}/"
        else:
            roster = store.get("nidiff/roster").decode().split(",")
            if len(roster) == world_size and roster[rank] == mine:
                store.set(f"nidiff/ack/{rank}", roster[0])
                return f"nidiff/{roster[0]}/"
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: the {world_size} ranks did not meet in the store within {timeout}")
        time.sleep(0.01)


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

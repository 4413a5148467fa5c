"""DDP on CPU: torchrun starts two gloo processes that train the tiny model for a few steps.

Checked: both ranks end with bitwise identical weights and EMA weights while their losses differ (each rank draws
its own data shard and noise seeds); the logged loss is the mean over ranks; the checkpoint holds both ranks' RNG
states; and only rank 0 touches the workdir (a sys.addaudithook records every open-for-write, rename, remove and
mkdir under it). And the ranks of each start of a group (torchrun restarts it in the same key-value store) agree
on a store prefix that no earlier start used.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from training import load_checkpoint
from training.checkpoint import list_checkpoints
from training.distributed import _fresh_prefix

ROOT = pathlib.Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from training import TrainConfig, train

    workdir, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    writes = []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir"):
            path, writing = args[0], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(workdir):
            writes.append(event + " " + os.fsdecode(path))

    sys.addaudithook(audit)
    data = 0.5 * torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(workdir=workdir, model="tiny", batch_size=16, steps=4, save_every=2, log_every=1, warmup=2,
                      lr=1e-3, ema_decay=0.5)
    result = train(cfg, progress=False, dataset=data)
    torch.save({"model": result["model"].state_dict(), "ema": result["ema_model"].state_dict()},
               os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"losses": result["losses"], "writes": writes, "step": result["step"]}, f)
    """
)


@pytest.mark.subprocess
def test_two_gloo_ranks_agree_and_only_rank_0_writes(tmp_path):
    worker, workdir, out = tmp_path / "worker.py", tmp_path / "run", tmp_path / "out"
    worker.write_text(WORKER)
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(workdir), str(out)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for part in ("model", "ema"):
        for name, value in states[0][part].items():
            assert torch.equal(value, states[1][part][name]), (part, name)
    assert all(r["step"] == 4 for r in reports)
    assert reports[0]["losses"] != reports[1]["losses"]  # own data shard and noise seeds per rank

    assert reports[1]["writes"] == []
    assert any("metrics.jsonl" in w for w in reports[0]["writes"])
    assert [p.name for p in list_checkpoints(workdir)] == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for k, r in enumerate(lines):
        assert r["loss"] == pytest.approx((reports[0]["losses"][k] + reports[1]["losses"][k]) / 2, rel=1e-12)
    ckpt = load_checkpoint(workdir)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    for name, value in ckpt["model"].items():
        assert torch.equal(value, states[0]["model"][name])


def test_each_start_of_a_group_meets_under_a_store_prefix_no_earlier_start_used():
    """One store for every start, as torchrun's agent keeps it across restarts. Whichever rank comes first (rank 1
    finding the roster of the start before, rank 0 finding the numbers of the ranks before), all ranks of a start
    return one prefix, new to the store; a start may have another world size."""
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=60))

    def start(delays: list[float]) -> set[str]:
        def rank(r: int) -> str:
            time.sleep(delays[r])  # orders the arrivals
            return _fresh_prefix(store, r, len(delays), timedelta(seconds=60))

        with ThreadPoolExecutor(len(delays)) as pool:
            return set(pool.map(rank, range(len(delays))))

    used: set[str] = set()
    for delays in ([0, 0], [0.3, 0], [0, 0.3], [0.2, 0, 0.4]):
        (prefix,) = start(delays)
        assert prefix not in used
        used.add(prefix)

"""Checkpoints: atomic writes, corruption detection, fallback, refusal of code-running pickles, RNG states,
and crash safety of a real training process (SIGKILL mid-write, SIGTERM)."""

import json
import os
import pathlib
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from training import CheckpointError, UnsafeCheckpointError, load_checkpoint
from training.checkpoint import (
    WRITE_DELAY_ENV,
    checkpoint_path,
    list_checkpoints,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from training.rng import capture_rng_state, restore_rng_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


def payload(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "weights": {"w": torch.randn(64, 64, generator=g), "half": torch.randn(8, generator=g).bfloat16()},
        "counts": torch.arange(5),
        "flags": torch.tensor([True, False]),
        "meta": {"name": "run", "betas": (0.9, 0.999), "steps": [1, 2, 3], "none": None, "lr": 2e-4},
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_leaves_no_temporary_file(tmp_path):
    path = save_checkpoint(payload(3), checkpoint_path(tmp_path, 3))
    assert path == tmp_path / "checkpoints" / "ckpt_00000003.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt_00000003.pt"]
    assert_same(load_checkpoint(path), payload(3))
    assert_same(load_checkpoint(tmp_path), payload(3))  # a workdir: its newest checkpoint


def _flip_byte_inside(path: pathlib.Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0
    data[at + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_silent_corruption_is_detected_by_the_digest(tmp_path):
    """A flipped bit inside tensor data still unpickles (torch.load does not check it): the SHA-256 catches it."""
    p = payload(1)
    path = save_checkpoint(p, checkpoint_path(tmp_path, 1))
    _flip_byte_inside(path, p["weights"]["w"][10].numpy().tobytes())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_truncated_newest_falls_back_to_the_previous_with_a_warning(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(payload(step), checkpoint_path(tmp_path, step))
    newest = checkpoint_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match="ckpt_00000003"):
        assert load_latest_checkpoint(tmp_path)["step"] == 2
    checkpoint_path(tmp_path, 2).write_bytes(b"")
    checkpoint_path(tmp_path, 1).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_latest_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


class _Exploit:
    """Unpickling this calls Path.touch(marker): code execution, which loading must never do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, container):
    marker = tmp_path / "exploited"
    path = checkpoint_path(tmp_path, 9)
    path.parent.mkdir(parents=True)
    evil = {"format": "nidiff-checkpoint-1", "payload": {"step": 9, "x": _Exploit(marker)}}
    if container == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_checkpoint(path)
    save_checkpoint(payload(4), checkpoint_path(tmp_path, 4))
    with pytest.warns(RuntimeWarning, match="refused"):
        assert load_latest_checkpoint(tmp_path)["step"] == 4  # the crafted newest one is skipped, not run
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, CheckpointError) and issubclass(CheckpointError, ValueError)


def test_prune_keeps_the_newest_and_removes_stale_temporaries(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint({"step": step}, checkpoint_path(tmp_path, step))
    stale = tmp_path / "checkpoints" / ".ckpt_00000025.pt.tmp-123"
    stale.write_bytes(b"partial")
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000015.pt", "ckpt_00000020.pt"]
    assert not stale.exists()


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002 (the global generator is what is checkpointed)
    random.seed(3)
    np.random.standard_normal()  # noqa: NPY002 (leaves a cached gaussian in the state)
    state = capture_rng_state(torch.device("cpu"))
    draws = (torch.rand(3), np.random.random(3), random.random())  # noqa: NPY002
    save_checkpoint({"rng": state}, checkpoint_path(tmp_path, 1))
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path)["rng"], torch.device("cpu"))
    again = (torch.rand(3), np.random.random(3), random.random())  # noqa: NPY002
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


# ---- crash safety of a real training process ----------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from training import TrainConfig, train
    torch.set_num_threads(1)
    data = 0.5 * torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(workdir=sys.argv[1], model="tiny", batch_size=16, steps=int(sys.argv[2]),
                      save_every=int(sys.argv[3]), log_every=1, warmup=2)
    result = train(cfg, progress=False, dataset=data)
    print(json.dumps({"step": result["step"], "stopped_by": result["stopped_by"]}))
    """
)


def start_child(workdir, steps: int, save_every: int, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(workdir), str(steps), str(save_every)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.02)


@pytest.mark.subprocess
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    workdir = tmp_path / "run"
    folder = workdir / "checkpoints"
    proc = start_child(workdir, steps=1000, save_every=2, **{WRITE_DELAY_ENV: "3"})

    def writing_the_second() -> bool:
        committed = checkpoint_path(workdir, 2).exists()
        return committed and any(p.name.startswith(".ckpt_00000004") for p in folder.iterdir())

    wait_for(writing_the_second, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(workdir)] == ["ckpt_00000002.pt"]
    ckpt = load_checkpoint(workdir)
    assert ckpt["step"] == 2 and ckpt["data"]["position"] == 2


@pytest.mark.subprocess
def test_sigterm_finishes_the_step_saves_and_exits_0(tmp_path):
    workdir = tmp_path / "run"
    proc = start_child(workdir, steps=100_000, save_every=0)
    metrics = workdir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stopped_by"] == "SIGTERM" and 3 <= result["step"] < 100_000
    assert [p.name for p in list_checkpoints(workdir)] == [f"ckpt_{result['step']:08d}.pt"]
    assert load_checkpoint(workdir)["step"] == result["step"]
    # the TensorBoard writer was closed: every logged step reached the event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir), size_guidance={"scalars": 0})
    events.Reload()
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert [e.step for e in events.Scalars("train/loss")] == logged == list(range(1, result["step"] + 1))

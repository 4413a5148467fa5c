"""Several processes with torchrun (gloo on CPU): sampling and likelihood shared out over ranks give the same
results as one process, every flag of every command passes through torchrun's own parser unchanged, and a training
rank killed mid-run under `--max-restarts=1` costs nothing: the restarted group resumes from the newest checkpoint
and ends bitwise where an unbroken run ends."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from torch.distributed.run import get_args_parser

from nidiff_cli import COMMANDS, build_parser
from training import load_checkpoint
from training.checkpoint import checkpoint_path, content_digest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

pytestmark = pytest.mark.subprocess


# Two ranks train the tiny model; the first checkpoint comes at step 4, and 36 steps remain to kill a rank in.
STEPS, SAVE_EVERY = 40, 4
TRAIN = ("train", "--config", "tiny", "--device", "cpu", "--train-steps", str(STEPS), "--batch-size", "8",
         "--save-every", str(SAVE_EVERY), "--set", "training.log_every=1")  # fmt: skip


def command(*args: str, nproc: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra]
    if nproc > 1 or extra:
        return [*launcher, str(ROOT / "run.py"), *args]
    return [sys.executable, str(ROOT / "run.py"), *args]


def run_py(*args: str, nproc: int = 1, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(*args, nproc=nproc, extra=extra), capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    """An unbroken two-rank training run (the model sampled below, and the reference of the restart test)."""
    workdir = tmp_path_factory.mktemp("torchrun") / "run"
    run_py(*TRAIN, "--workdir", str(workdir), nproc=2)
    return workdir


@pytest.mark.parametrize("method, steps", [("dpm2m", "4"), ("pc", "5")])
def test_sampling_on_two_ranks_equals_one_process(trained, tmp_path, method, steps):
    args = ["sample", "--workdir", str(trained), "--sampler", method, "--sample-steps", steps, "--num-samples", "10",
            "--sample-batch-size", "3"]  # fmt: skip
    run_py(*args, "--out", str(tmp_path / "one"))
    run_py(*args, "--out", str(tmp_path / "two"), nproc=2)
    one = np.load(tmp_path / "one" / "samples.npz")["samples"]
    two = np.load(tmp_path / "two" / "samples.npz")["samples"]
    assert one.shape == (10, 8, 8, 1) and np.array_equal(one, two)
    assert json.loads((tmp_path / "two" / "samples.json").read_text())["processes"] == 2


def test_likelihood_on_two_ranks_equals_one_process(trained, tmp_path):
    args = ["likelihood", "--workdir", str(trained), "--num-images", "5", "--sample-batch-size", "2", "--rtol", "1e-3",
            "--atol", "1e-3"]  # fmt: skip
    run_py(*args, "--out", str(tmp_path / "one"))
    run_py(*args, "--out", str(tmp_path / "two"), nproc=2)
    one = json.loads((tmp_path / "one" / "likelihood.json").read_text())
    two = json.loads((tmp_path / "two" / "likelihood.json").read_text())
    assert len(one["per_image"]) == 5 and two["processes"] == 2
    np.testing.assert_allclose(two["per_image"], one["per_image"], rtol=0, atol=1e-6)
    assert abs(two["bits_per_dim"] - one["bits_per_dim"]) <= 1e-6


VALUES = {"--ema-decay": "0.5", "--sde": "vp,nivp", "--samplers": "ddpm,dpm2m", "--shard": "1/2", "grid": "grid.toml"}


def _full_flag_set(parser: argparse.ArgumentParser) -> list[str]:
    """The command's positional arguments, then one occurrence of every option, each with a value of the right
    shape."""
    argv = [VALUES.get(action.dest, "1") for action in parser._actions if not action.option_strings]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:
            argv.append(flag)
        elif action.choices:
            argv += [flag, str(list(action.choices)[0])]
        elif action.dest == "settings":
            argv += [flag, "sampling.options.snr=0.1" if flag == "--set" else "snr=0.1"]
        else:
            argv += [flag, VALUES.get(flag, "1")]
    return argv


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_of_every_command_passes_through_torchrun_unchanged(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    flags = _full_flag_set(sub)
    launched = get_args_parser().parse_args(["--nproc_per_node=2", "run.py", command, *flags])
    assert launched.training_script == "run.py" and launched.training_script_args == [command, *flags]
    ours = build_parser().parse_args([command, *flags])  # and our parser reads them back
    assert ours.command == command


def test_only_rank_0_downloads_and_the_others_wait(monkeypatch):
    from nidiff_cli import train as train_cmd
    from nidiff_cli.config import load_config

    calls = []

    def fake_split(dataset, root, split, download=False):
        calls.append(download)
        if not download and len(calls) < 3:
            raise FileNotFoundError("not there yet")

    monkeypatch.setattr(train_cmd, "data_split", fake_split)
    monkeypatch.setattr(train_cmd.time, "sleep", lambda s: None)
    cfg = load_config("cifar10")
    monkeypatch.setenv("RANK", "1")
    train_cmd.download_once(cfg)
    assert calls == [False, False, False]  # rank 1 never downloads; it retries until the data reads
    calls.clear()
    monkeypatch.setenv("RANK", "0")
    train_cmd.download_once(cfg)
    assert calls == [True]


def _workers(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (its children, with the RANK torchrun gave them; from /proc)."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if parent == launcher_pid else []
        except OSError:  # the process ended meanwhile
            continue
        found.update({int(item[5:]): int(entry.name) for item in env if item.startswith(b"RANK=")})
    return found


def _final_state(workdir: pathlib.Path) -> str:
    """Digest of everything a run's last checkpoint carries forward (its config names the workdir, so not that)."""
    ckpt = load_checkpoint(workdir)
    return content_digest({k: ckpt[k] for k in ("step", "model", "ema", "optimizer", "scheduler", "rng", "data")})


@pytest.mark.skipif(not pathlib.Path("/proc/self/environ").exists(), reason="finds the worker processes in /proc")
def test_a_killed_training_rank_restarts_the_group_which_resumes_with_nothing_lost(trained, tmp_path):
    """SIGKILL rank 0 (the rank that writes) once the first checkpoint exists: torchrun restarts both ranks, they
    resume from the newest checkpoint and end with the unbroken run's weights, EMA, optimiser, RNG and data
    position, bitwise, and with its metrics for every step, each logged once."""
    workdir, log_path = tmp_path / "run", tmp_path / "torchrun.log"
    cmd = command(*TRAIN, "--workdir", str(workdir), nproc=2, extra=("--max-restarts=1",))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 300  # a hang fails with the log instead of holding up the suite
    try:
        while not checkpoint_path(workdir, SAVE_EVERY).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("no first checkpoint:\n" + log_path.read_text()[-3000:])
            time.sleep(0.01)
        os.kill(_workers(proc.pid)[0], signal.SIGKILL)
        try:
            proc.wait(timeout=deadline - time.monotonic())
        except subprocess.TimeoutExpired:
            pytest.fail("the restarted group did not finish:\n" + log_path.read_text()[-3000:])
    finally:
        if proc.poll() is None:  # the workers run in sessions of their own: end them, then torchrun
            for pid in [*_workers(proc.pid).values(), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    resumed = re.search(rf"done: step {STEPS} \(resumed from step (\d+)\)", out)
    assert resumed, out[-3000:]
    assert int(resumed.group(1)) % SAVE_EVERY == 0 and SAVE_EVERY <= int(resumed.group(1)) < STEPS

    assert _final_state(workdir) == _final_state(trained)
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    fields = ("step", "loss", "grad_norm", "lr")
    assert [[r[k] for k in fields] for r in metrics] == [[r[k] for k in fields] for r in reference]

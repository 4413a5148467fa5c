"""Several processes with torchrun (gloo on CPU): sampling and likelihood shared out over ranks give the same
results as one process, and every flag of every command passes through torchrun's own parser unchanged."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from torch.distributed.run import get_args_parser

from nidiff_cli import COMMANDS, build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

pytestmark = pytest.mark.subprocess


def run_py(*args: str, nproc: int = 1, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra]
    cmd = (
        [*launcher, str(ROOT / "run.py"), *args]
        if nproc > 1 or extra
        else [sys.executable, str(ROOT / "run.py"), *args]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("torchrun") / "run"
    run_py("train", "--config", "tiny", "--device", "cpu", "--workdir", str(workdir), "--train-steps", "6",
           "--batch-size", "8")  # fmt: skip
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


def _full_flag_set(parser: argparse.ArgumentParser) -> list[str]:
    """One occurrence of every option of a command, with a value of the right shape."""
    argv = []
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
            argv += [flag, {"--ema-decay": "0.5", "--sde": "vp,nivp", "--samplers": "ddpm,dpm2m"}.get(flag, "1")]
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

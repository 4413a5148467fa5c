"""run.py end to end: every command with tiny budgets in a temporary directory, and the exit-2 error paths.

Each command runs as `python run.py ...` in a subprocess (the way users run it), on the `tiny` model config with
a few training steps, so the numbers are those of an untrained model: the assertions check what the files and
numbers must satisfy whatever the model (shapes, counts, ranges, NFE = steps, resume), not sample quality.
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

import run

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.subprocess

# One thread per process: on a small shared machine extra threads only spin.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TINY = ["--config", "tiny", "--device", "cpu"]
STUDY_COLUMNS = ["sde", "noise", "loss", "sampler", "steps", "nfe", "seed", "train_steps", "n", "fd", "fd_lo", "fd_hi",
                 "floor_fd", "floor_sd", "precision", "recall", "bpd", "commit", "torch"]  # fmt: skip
NOISE = {"vp": "white", "nivp": "gff:1"}


def cli(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, exactly one non-empty line on stderr, no traceback, mentioning every word."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The main job with a tiny budget; later tests load its checkpoint and classifier."""
    workdir = tmp_path_factory.mktemp("cli") / "main"
    args = [*TINY, "--workdir", str(workdir), "--train-steps", "30", "--batch-size", "32", "--save-every", "15"]
    out = ok(
        cli(
            "--sde",
            "nivp",
            "--sampler",
            "pc",
            *args,
            "--sample-steps",
            "20",
            "--num-samples",
            "40",
            "--bpd-images",
            "6",
        )
    )
    return workdir, out


def test_main_job_writes_grid_metrics_and_summary(main_run):
    workdir, out = main_run
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert str(workdir / "samples.png") in out and str(workdir / "metrics.json") in out
    # 40 images of 8x8 in a ceil(sqrt(40)) = 7-column grid with 1-pixel padding, upscaled 4x.
    grid = Image.open(workdir / "samples.png")
    assert grid.size == (4 * (7 * 9 + 1), 4 * (6 * 9 + 1))
    assert metrics["train_steps"] == 30 and metrics["sampler"] == {
        "method": "pc",
        "steps": 20,
        "nfe": 20.0,
        "n": 40,
        "options": {},
    }
    assert metrics["frechet_distance"] > 0 and metrics["frechet_distance_real_floor"] > 0
    # The floor is the mean over 20 draws of 40 train digits, with the spread of the draws beside it.
    assert metrics["frechet_distance_real_floor_sd"] > 0
    assert "20 draws of 40 train digits" in metrics["frechet_distance_real_floor_note"]
    assert metrics["fd_over_floor"] == metrics["frechet_distance"] / metrics["frechet_distance_real_floor"]
    assert f"+- {metrics['frechet_distance_real_floor_sd']:.3f}, ratio {metrics['fd_over_floor']:.2f}" in out
    assert metrics["interrupted"] is False and len(metrics["commit"]) == 40 and metrics["torch"] == torch.__version__
    assert metrics["device"] == "cpu" and metrics["seed"] == 0 and len(metrics["config_sha256"]) == 16
    samples = np.load(workdir / "samples.npz")["samples"]
    assert samples.dtype == np.uint8 and samples.shape == (40, 8, 8, 1)
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert sum(metrics["sample_class_histogram"]) == 40
    assert metrics["classifier_test_accuracy"] >= 0.9  # evaluation's CNN on held-out digits (about 0.97)
    bpd = metrics["bits_per_dim"]
    assert bpd["levels"] == 17 and bpd["images"] == 6 and "2/17" in bpd["dequantization"]
    # A density on [-1, 1]^64 that is not wildly wrong: between 0 and a few times log2(17) = 4.09 bits.
    assert 0 < bpd["mean"] < 20 and bpd["standard_error"] > 0
    assert (workdir / "digits_classifier.pt").is_file()


def test_train_resumes_from_the_newest_checkpoint(tmp_path, one_thread, capsys):
    workdir = tmp_path / "train"
    common = ["train", *TINY, "--workdir", str(workdir), "--batch-size", "16", "--save-every", "5"]
    assert "step 10" in ok(cli(*common, "--train-steps", "10"))
    assert run.main([*common, "--train-steps", "15"]) == 0  # in-process: the resume itself is what is tested
    assert "step 15" in capsys.readouterr().out
    names = sorted(p.name for p in (workdir / "checkpoints").glob("ckpt_*.pt"))
    assert names == ["ckpt_00000005.pt", "ckpt_00000010.pt", "ckpt_00000015.pt"]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 15  # one continuous log, no step twice


def test_sample_writes_npz_grid_and_provenance(main_run, tmp_path):
    workdir, _ = main_run
    out = ok(cli("sample", "--workdir", str(workdir), "--sampler", "ddim", "--sample-steps", "5", "--num-samples",
                 "10", "--out", str(tmp_path / "out")))  # fmt: skip
    assert "NFE 5 " in out
    samples = np.load(tmp_path / "out" / "samples.npz")["samples"]
    assert samples.dtype == np.uint8 and samples.shape == (10, 8, 8, 1)  # N x H x W x C, as score_sde writes
    assert Image.open(tmp_path / "out" / "grid.png").size == (4 * (4 * 9 + 1), 4 * (3 * 9 + 1))
    info = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert info["samples"] == 10 and info["nfe"] == 5.0 and info["interrupted"] is False
    assert {"commit", "torch", "device", "seed", "config_sha256"} <= set(info)


def test_likelihood_reports_mean_and_standard_error(main_run):
    workdir, _ = main_run
    out = ok(cli("likelihood", "--workdir", str(workdir), "--num-images", "5", "--rtol", "1e-3", "--atol", "1e-3",
                 "--out", str(workdir / "lik")))  # fmt: skip
    result = json.loads((workdir / "lik" / "likelihood.json").read_text())
    assert result["images"] == 5 and result["levels"] == 17 and result["divergence"] == "rademacher"
    assert len(result["per_image"]) == 5 and result["bits_per_dim"] == pytest.approx(np.mean(result["per_image"]))
    assert 0 < result["bits_per_dim"] < 20 and result["standard_error"] > 0
    assert f"{result['bits_per_dim']:.4f}" in out


def test_fid_with_the_digits_feature_space(main_run, one_thread):
    workdir, _ = main_run
    out = ok(cli("fid", "--workdir", str(workdir), "--sampler", "ddpm", "--sample-steps", "4", "--num-samples", "12"))
    result = json.loads((workdir / "fid" / "fid.json").read_text())
    assert result["metric"] == "digits" and result["nfe"] == 4.0 and "config_sha256" in result
    assert len(list((workdir / "fid" / "samples").glob("*.png"))) == 12
    assert result["fid"] > 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert np.isfinite(result["kid"]) and "FD (digits features)" in out
    # Scoring the held-out reference folder against itself (in-process): FD 0 and P = R = 1.
    ref = workdir / "fid" / "reference_digits_test"
    out_dir = workdir / "fid_same"
    assert (
        run.main(["fid", "--workdir", str(workdir), "--images", str(ref), "--ref", str(ref), "--out", str(out_dir)])
        == 0
    )
    same = json.loads((out_dir / "fid.json").read_text())
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0


def test_fid_without_inception_weights_says_how_to_proceed(main_run, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    import cleanfid.inception_torchscript

    monkeypatch.setattr(cleanfid.inception_torchscript, "check_download_inception", no_network)
    workdir, _ = main_run
    ref = workdir / "fid" / "reference_digits_test"
    code = run.main(
        ["fid", "--workdir", str(workdir), "--images", str(ref), "--ref", str(ref), "--metric", "inception"]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "internet" in err and "--metric digits" in err


def test_table_runs_the_protocol_grid(main_run, tmp_path):
    workdir = tmp_path / "table"
    workdir.mkdir()
    shutil.copy(main_run[0] / "digits_classifier.pt", workdir)  # the cache is valid for the same digits split
    out = ok(cli("table", *TINY, "--workdir", str(workdir), "--train-steps", "8", "--batch-size", "16",
                 "--sample-steps", "6,3", "--num-samples", "16", "--samplers", "ddpm,dpm2m"))  # fmt: skip
    with open(workdir / "table1.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == STUDY_COLUMNS  # the columns of run.py study
    assert [(r["sde"], r["sampler"], r["steps"]) for r in rows] == [
        (sde, sampler, steps) for sde in ("vp", "nivp") for steps in ("6", "3") for sampler in ("ddpm", "dpm2m")
    ]
    for r in rows:
        assert float(r["fd"]) > 0 and 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1
        assert float(r["fd_lo"]) <= float(r["fd"]) <= float(r["fd_hi"]) and float(r["floor_fd"]) > 0
        # The paper's protocol: NI-DDPM's loss for the models its ddpm sampler draws from.
        assert (r["noise"], r["loss"], r["seed"], r["train_steps"], r["n"], r["bpd"]) == (
            NOISE[r["sde"]], "ddpm", "0", "8", "16", ""
        )  # fmt: skip
        if r["sampler"] == "ddpm":
            assert float(r["nfe"]) == float(r["steps"])  # one network evaluation per ancestral step
    assert "| sampler | steps | VP (white) FD | VP (white) P | VP (white) R | NIVP (GFF) FD |" in out, out
    assert (workdir / "table1.md").read_text().startswith("| sampler | steps |")
    assert {r["commit"] for r in rows} == {metrics_commit()} and {r["torch"] for r in rows} == {torch.__version__}
    ok(cli("plot", "--table", str(workdir / "table1.csv")))
    assert Image.open(workdir / "table1.png").size[0] > 100
    assert sorted(p.name for p in workdir.iterdir()) == [
        "digits_classifier.pt",
        "nivp",
        "table1.csv",
        "table1.md",
        "table1.png",
        "vp",
    ]


def test_noise_picture_gets_smoother_with_the_gff_power(tmp_path):
    out_png = tmp_path / "noise.png"
    ok(cli("noise", "--size", "32", "--count", "3", "--powers", "0.5,1,2", "--out", str(tmp_path)))
    img = np.asarray(Image.open(out_png).convert("L")).astype(np.float64)
    cell, pad, label = 64, 4, 230
    rows = 1 + 3 + 2  # white, three powers, data-matched noise, real digits
    assert img.shape == (rows * (cell + pad) + pad, label + 3 * (cell + pad) + pad)

    def roughness(row: int) -> float:
        """Mean squared difference of horizontally adjacent noise pixels over the variance, cells of one row.

        32x32 noise is upscaled 2x, so compare pixels two apart. For white noise it is 2 (independent pixels);
        the GFF spectrum ~|k|^(-2p) puts the variance in low frequencies, so it falls as p grows."""
        y = pad + row * (cell + pad)
        cells = [
            img[y : y + cell, label + pad + i * (cell + pad) : label + pad + i * (cell + pad) + cell] for i in range(3)
        ]
        return float(np.mean([np.mean((c[:, 2::2] - c[:, :-2:2]) ** 2) / c.var() for c in cells]))

    r = [roughness(i) for i in range(4)]
    assert r[0] > 1.5  # white: about 2 (less where +-3 sd clipping flattens extremes)
    assert r[0] > r[1] > r[2] > r[3]


def test_bad_arguments_exit_2_with_one_line_on_stderr(tmp_path):
    # The real process: exit status 2 and one stderr line (argparse's usage lines are replaced).
    one_line_error(cli("--sde", "foo", cwd=tmp_path), "run.py main: error:", "--sde", "invalid choice", "foo")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sde", "vp", "--sampler", "als"], ["--sampler als", "VE"]),
        (["--sde", "nive", "--sampler", "ddpm"], ["--sampler ddpm", "VP"]),
        (["sample", "--sample-steps", "0"], ["--sample-steps", ">= 1"]),
        (["table", "--samplers", "ddpm,euler"], ["--samplers", "euler"]),
        (["train", "--dataset", "folder"], ["--data-root"]),
        (["train", "--dataset", "folder", "--data-root", "no/such/dir"], ["no/such/dir", "does not exist"]),
        (["sample"], ["runs/digits_nivp", "does not exist"]),
        (["fid", "--images", "no/such/dir"], ["--images", "not a directory"]),
        (["noise", "--powers", "1,-2"], ["--powers"]),
        (["sample", "--checkpoint", "bad.pt", "--num-samples", "2"], ["bad.pt"]),
        (["--device", "banana"], ["--device", "banana", "not a torch device"]),
        (["--device", "cuda"], ["--device cuda", "CUDA is not available"]),
        (["sample", "--device", "cuda:7"], ["cuda:7"]),
        (["noise", "--device", "cuda"], ["CUDA"]),
        (["--set", "training.lrr=1"], ["training.lrr", "did you mean 'training.lr'"]),
        (["--set", "training.lr=fast"], ["training.lr", "float", "fast"]),
        (["--set", "training.lr"], ["--set", "section.key=value"]),
        (["--lr", "1e-3", "--set", "training.lr=2e-3"], ["training.lr", "both"]),
        (["--config", "no_such.toml"], ["no_such.toml"]),
        (["--n", "5"], ["unrecognized arguments: --n"]),
        (["--max", "5"], ["unrecognized arguments: --max"]),
    ],
)
def test_bad_arguments_are_refused_in_process(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"\x00 not a checkpoint")
    try:
        code = run.main(args)
    except SystemExit as stop:  # argparse errors exit from inside parse_args
        code = stop.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    for word in words:
        assert word in err[0], err[0]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    # A pickle whose loading would call os.system: torch.load(weights_only=True) refuses it without running it.
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": Exploit()}, evil)
    assert run.main(["likelihood", "--checkpoint", str(evil), "--num-images", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pt" in err[0] and not marker.exists()


def _start(args: list[str], log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args], stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=ENV
    )


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, "the command ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the command to get going"
        time.sleep(0.2)


def test_ctrl_c_during_the_main_job_saves_and_samples_nothing(tmp_path):
    import signal

    workdir = tmp_path / "main"
    proc = _start([*TINY, "--workdir", str(workdir), "--train-steps", "100000", "--batch-size", "8",
                   "--set", "training.log_every=1"], tmp_path / "err.txt")  # fmt: skip
    metrics_log = workdir / "metrics.jsonl"
    _wait_for(lambda: metrics_log.is_file() and metrics_log.read_text().strip(), proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["stopped_by"] == "SIGINT" and metrics["train_steps"] >= 1
    assert list((workdir / "checkpoints").glob("ckpt_*.pt"))  # the training state is saved
    assert not (workdir / "samples.npz").exists() and not (workdir / "samples.png").exists()


def test_sigterm_during_sampling_writes_what_it_has(main_run, tmp_path):
    import signal

    workdir, _ = main_run
    log = tmp_path / "err.txt"
    proc = _start(["sample", "--workdir", str(workdir), "--sampler", "pc", "--sample-steps", "200", "--num-samples",
                   "100000", "--sample-batch-size", "4", "--out", str(tmp_path / "s")], log)  # fmt: skip
    _wait_for(lambda: "sampling pc" in log.read_text() and "| 4/" in log.read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    samples = np.load(tmp_path / "s" / "samples.npz")["samples"]
    assert info["interrupted"] is True and 4 <= info["samples"] < 100000 and len(samples) == info["samples"]
    assert f"{info['samples']} of 100000" in out


def test_main_job_logs_its_metrics_to_tensorboard(main_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = main_run
    events = EventAccumulator(str(workdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/frechet_distance", "eval/bits_per_dim"} <= tags
    metrics = json.loads((workdir / "metrics.json").read_text())
    logged = events.Scalars("eval/frechet_distance")[-1]
    assert logged.step == 30 and logged.value == pytest.approx(metrics["frechet_distance"], rel=1e-6)


def test_export_then_sample_from_the_file_then_fine_tune_from_it(main_run, tmp_path):
    workdir, _ = main_run
    weights = tmp_path / "digits.safetensors"
    ok(cli("export", "--workdir", str(workdir), "--out", str(weights)))
    checkpoint = sorted((workdir / "checkpoints").glob("ckpt_*.pt"))[-1]
    assert weights.stat().st_size < 0.5 * checkpoint.stat().st_size
    ok(cli("sample", "--checkpoint", str(weights), "--sampler", "ddim", "--sample-steps", "4", "--num-samples", "6",
           "--out", str(tmp_path / "s")))  # fmt: skip
    assert np.load(tmp_path / "s" / "samples.npz")["samples"].shape == (6, 8, 8, 1)
    out = ok(cli("train", *TINY, "--init-from", str(weights), "--workdir", str(tmp_path / "ft"), "--train-steps", "3",
                 "--batch-size", "8"))  # fmt: skip
    assert "step 3" in out
    refused = cli("train", "--config", "digits", "--init-from", str(weights), "--workdir", str(tmp_path / "ft2"),
                  "--train-steps", "1")  # fmt: skip
    one_line_error(refused, "run.py train: error:")  # the tiny network does not fit the digits architecture


@pytest.mark.skipif(shutil.which("nidiff") is None, reason="the nidiff console script is not installed")
def test_the_console_script_runs_the_same_program(tmp_path):
    proc = subprocess.run(["nidiff", "config", "--config", "tiny"], capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ok(cli("config", "--config", "tiny", cwd=tmp_path))
    help_text = subprocess.run(["nidiff", "--help"], capture_output=True, text=True, env=ENV, timeout=120).stdout
    assert "usage: nidiff" in help_text and "main" in help_text


def metrics_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_plot_writes_the_loss_curve_of_a_run(main_run, tmp_path):
    workdir, _ = main_run
    out = ok(cli("plot", "--workdir", str(workdir), "--out", str(tmp_path)))
    assert str(tmp_path / "loss.png") in out and Image.open(tmp_path / "loss.png").size[0] > 100
    one_line_error(cli("plot", "--workdir", str(tmp_path)), "metrics.jsonl", "does not exist")


@pytest.mark.parametrize("content", [None, b"not a png"])
def test_an_empty_folder_or_a_corrupt_image_stops_with_one_line(content, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    if content is not None:
        (folder / "broken.png").write_bytes(content)
    code = run.main(["train", *TINY, "--dataset", "folder", "--data-root", str(folder), "--train-steps", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert ("broken.png" if content else "images") in err[0] and "Traceback" not in err[0]


def test_main_job_with_the_blur_sde_and_dpm2m(tmp_path):
    """`run.py --sde blur --sampler dpm2m` (docs/math.md §11) trains, samples per frequency and scores, bits/dim
    included; a sampler without a per-coefficient form is refused on one line."""
    workdir = tmp_path / "blur"
    ok(cli("--sde", "blur", "--sampler", "dpm2m", *TINY, "--workdir", str(workdir), "--train-steps", "10",
           "--num-samples", "16", "--bpd-images", "2"))  # fmt: skip
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["sde"] == "blur" and metrics["sampler"]["method"] == "dpm2m" and metrics["sampler"]["nfe"] == 10
    assert np.isfinite(metrics["bits_per_dim"]["mean"]) and len(metrics["bits_per_dim"]["per_image"]) == 2
    assert np.isfinite(metrics["frechet_distance"])
    assert (workdir / "samples.png").is_file()
    one_line_error(cli("--sde", "heat", "--sampler", "unipc", *TINY, "--workdir", str(tmp_path / "heat")), "unipc")

"""TensorBoard event files of a run: the training scalars are those of metrics.jsonl, the EMA sample grid is the
PNG's image, training.log_scalars appends evaluation scalars, and a resumed run hides an interrupted session's
events past its checkpoint."""

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tqdm.auto import tqdm

from tests.test_checkpoint import ROOT
from tests.test_training import config, gaussian_images
from training import log_scalars, train
from training.checkpoint import checkpoint_path

pytestmark = pytest.mark.usefixtures("one_thread")


def read_events(workdir) -> EventAccumulator:
    acc = EventAccumulator(str(workdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def new_threads(before: set) -> set:
    """Threads started since `before` was taken, apart from tqdm's monitor (the samplers' progress bars)."""
    return {t for t in threading.enumerate() if t not in before and t is not tqdm.monitor}


def as_float32(x: float) -> float:
    return float(np.float32(x))


def test_training_scalars_sample_grid_and_eval_scalars(tmp_path):
    cfg = config(tmp_path, steps=6, log_every=2, sample_every=3, sample_count=4, sample_steps=2)
    threads = set(threading.enumerate())
    train(cfg, progress=False, dataset=gaussian_images(32, 11))
    log_scalars(cfg.workdir, {"eval/frechet_distance": 12.5, "eval/nll_bpd": 3.25}, step=6)
    assert not new_threads(threads)  # every writer was closed (its writer thread has ended)
    workdir = tmp_path / "run"
    acc = read_events(workdir)
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/frechet_distance", "eval/nll_bpd"} <= set(
        acc.Tags()["scalars"]
    )
    lines = metrics(workdir)
    assert [r["step"] for r in lines] == [2, 4, 6]
    for name in ("loss", "lr", "grad_norm"):
        events = acc.Scalars(f"train/{name}")
        assert [e.step for e in events] == [2, 4, 6]
        assert [e.value for e in events] == [as_float32(r[name]) for r in lines], name  # TensorBoard keeps float32
    assert [(e.step, e.value) for e in acc.Scalars("eval/frechet_distance")] == [(6, 12.5)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/nll_bpd")] == [(6, 3.25)]

    assert acc.Tags()["images"] == ["samples/ema"]
    images = acc.Images("samples/ema")
    assert [im.step for im in images] == [3, 6]
    for im in images:
        with Image.open(workdir / "samples" / f"step_{im.step:08d}.png") as png:
            expected = np.asarray(png.convert("RGB"), dtype=np.int16)
        logged = np.asarray(Image.open(io.BytesIO(im.encoded_image_string)).convert("RGB"), dtype=np.int16)
        assert (im.width, im.height) == (png.width, png.height) == (2 * 9 + 1, 2 * 9 + 1)
        # the PNG rounds x * 255, TensorBoard truncates it
        assert np.abs(logged - expected).max() <= 1


def test_resume_hides_the_events_of_an_interrupted_session_past_its_checkpoint(tmp_path):
    """Steps 3-4 were logged but their checkpoint is lost: the resumed run logs them again, and TensorBoard shows
    every step once, with the values of the (likewise truncated and rewritten) metrics.jsonl."""
    data = gaussian_images(32, 12)
    cfg = config(tmp_path, steps=4, log_every=1, save_every=2)
    train(cfg, progress=False, dataset=data)
    checkpoint_path(cfg.workdir, 4).unlink()
    assert train(config(tmp_path, steps=6, log_every=1, save_every=2), progress=False, dataset=data)["start_step"] == 2
    workdir = tmp_path / "run"
    lines = metrics(workdir)
    losses = read_events(workdir).Scalars("train/loss")
    assert [e.step for e in losses] == [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in losses] == [as_float32(r["loss"]) for r in lines]


def test_the_writer_is_closed_when_training_fails(tmp_path):
    data = gaussian_images(32, 13)
    data[5:] = float("nan")
    threads = set(threading.enumerate())
    with pytest.raises(FloatingPointError):
        train(config(tmp_path, steps=4, log_every=1), progress=False, dataset=data)
    assert not new_threads(threads)


def test_log_scalars_needs_an_existing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        log_scalars(tmp_path / "missing", {"eval/x": 1.0}, step=0)
    assert not (tmp_path / "missing").exists()


@pytest.mark.subprocess
def test_import_training_does_not_import_tensorboard():
    code = "import sys, training; print(sorted(m for m in sys.modules if 'tensorboard' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"

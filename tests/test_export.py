"""Weights-only export (safetensors): a small file that loads the same EMA network and SDE as its run, refuses
corrupt and foreign files, and starts a fine-tuning run from exactly its weights."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.test_training import config, gaussian_images
from training import CheckpointError, export_weights, load_checkpoint, load_model, load_weights, train
from training.checkpoint import checkpoint_path
from training.export import SPECTRUM_KEY
from training.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 4-step tiny run (checkpoints at steps 2 and 4) and the export of its newest checkpoint."""
    tmp_path = tmp_path_factory.mktemp("exported")
    data = gaussian_images(64, 21)
    cfg = config(tmp_path, steps=4, save_every=2, ema_decay=0.5)
    train(cfg, progress=False, dataset=data)
    return cfg, data, export_weights(cfg.workdir, tmp_path / "run.safetensors")


@pytest.mark.parametrize("noise", ["gff", "data"])
def test_export_is_small_and_loads_the_run_s_ema_network_and_sde(tmp_path, noise):
    cfg = config(tmp_path, steps=3, noise=noise, ema_decay=0.5)
    train(cfg, progress=False, dataset=gaussian_images(64, 20))
    out = tmp_path / "out" / "weights.safetensors"
    assert export_weights(cfg.workdir, out) == out
    assert out.stat().st_size < 0.5 * checkpoint_path(cfg.workdir, 3).stat().st_size
    with safe_open(str(out), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert (meta["format"], meta["version"], meta["step"]) == ("nidiff-weights", "1", "3")
    assert json.loads(meta["config"]) == cfg.to_dict()
    assert (SPECTRUM_KEY in keys) == (noise == "data")

    from_file, sde_file, cfg_file = load_model(out)
    from_run, sde_run, cfg_run = load_model(cfg.workdir)
    assert cfg_file == cfg_run == cfg and not from_file.training
    assert_same_weights(from_file.state_dict(), from_run.state_dict())
    assert_same_weights(load_model(out, ema=False)[0].state_dict(), from_run.state_dict())  # the export is EMA only
    assert type(sde_file) is type(sde_run) and sde_file.N == sde_run.N
    assert torch.equal(sde_file.cov.eigenvalues(), sde_run.cov.eigenvalues())  # the data spectrum round-trips
    weights, cfg_w, spectrum, step = load_weights(out)
    assert step == 3 and cfg_w == cfg and (spectrum is None) == (noise == "gff")
    if noise == "data":
        assert torch.equal(spectrum, load_checkpoint(cfg.workdir)["noise_spectrum"])


def test_export_of_a_given_checkpoint_file(exported, tmp_path):
    cfg, _, _ = exported
    out = export_weights(checkpoint_path(cfg.workdir, 2), tmp_path / "step2.safetensors")
    weights, _, _, step = load_weights(out)
    assert step == 2
    assert_same_weights(weights, load_checkpoint(checkpoint_path(cfg.workdir, 2))["ema"]["weights"])


def test_export_refuses_another_file_type(exported, tmp_path):
    cfg, _, _ = exported
    with pytest.raises(ValueError, match=r"writes a \.safetensors file"):
        export_weights(cfg.workdir, tmp_path / "weights.pt")
    assert not (tmp_path / "weights.pt").exists()


def _one_line_error(path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_corrupt_or_foreign_files_raise_checkpoint_error(exported, tmp_path):
    _, _, good = exported
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "truncated.safetensors", "truncated")
    (tmp_path / "tiny.safetensors").write_bytes(data[:5])
    _one_line_error(tmp_path / "tiny.safetensors", "truncated")

    weights, cfg, _, _ = load_weights(good)
    flipped = bytearray(data)
    needle = weights[next(iter(weights))].numpy().tobytes()
    at = data.find(needle)
    assert at > 0
    flipped[at + len(needle) // 2] ^= 0x01  # inside tensor data: safetensors itself does not notice
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    _one_line_error(tmp_path / "flipped.safetensors", "SHA-256")

    save_file(weights, tmp_path / "plain.safetensors")  # no metadata
    _one_line_error(tmp_path / "plain.safetensors", "not a nidiff weights file")
    save_file(weights, tmp_path / "other.safetensors", metadata={"format": "pt", "config": json.dumps(cfg.to_dict())})
    _one_line_error(tmp_path / "other.safetensors", "not a nidiff weights file")
    shutil.copy(checkpoint_path(cfg.workdir, 4), tmp_path / "renamed.safetensors")  # a torch checkpoint
    _one_line_error(tmp_path / "renamed.safetensors", "not a safetensors file")
    _one_line_error(tmp_path / "missing.safetensors", "no weights file")
    with pytest.raises(CheckpointError, match="exported weights only"):
        load_checkpoint(good)


def test_fine_tuning_starts_from_the_exported_weights_and_a_resume_ignores_init_from(exported, tmp_path):
    _, data, exported_file = exported
    file = shutil.copy(exported_file, tmp_path / "init.safetensors")
    weights, _, _, _ = load_weights(file)
    cfg = config(tmp_path, "finetune", steps=3, init_from=str(file))
    trainer = Trainer(cfg, dataset=data)  # built, no step taken
    assert_same_weights(trainer.model.state_dict(), weights)
    assert_same_weights(trainer.ema.module.state_dict(), weights)
    fresh = Trainer(config(tmp_path, "fresh", steps=3), dataset=data)  # same seed, no init_from
    assert any(not torch.equal(p, weights[k]) for k, p in fresh.model.state_dict().items())

    result = train(cfg, progress=False, dataset=data)
    assert (result["start_step"], result["step"]) == (0, 3)
    file.unlink()  # resuming reads the run's own checkpoint, not the export
    resumed = train(config(tmp_path, "finetune", steps=5, init_from=str(file)), progress=False, dataset=data)
    assert (resumed["start_step"], resumed["step"]) == (3, 5)
    with pytest.raises(CheckpointError, match="no weights file"):  # a fresh run needs it
        train(config(tmp_path, "new", steps=1, init_from=str(file)), progress=False, dataset=data)


def test_fine_tuning_refuses_another_architecture(exported, tmp_path):
    _, data, file = exported
    with pytest.raises(ValueError, match=r"differs from this run's in \{'ch': \(4, 8\)\}") as info:
        Trainer(config(tmp_path, steps=1, init_from=str(file), model_overrides={"ch": 8}), dataset=data)
    assert "\n" not in str(info.value)
    changed_dropout = Trainer(
        config(tmp_path, steps=1, init_from=str(file), model_overrides={"dropout": 0.2}), dataset=data
    )
    assert_same_weights(changed_dropout.model.state_dict(), load_weights(file)[0])
    with pytest.raises(ValueError, match="init_from must be the path of a .safetensors file"):
        config(tmp_path, init_from="run/checkpoints/ckpt_00000004.pt")

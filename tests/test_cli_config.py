"""The configuration tree of the command line (nidiff_cli.config): every field reachable through --set, round trips
through the parser and the written TOML, presets that build valid training configs, and the resume rule."""

from __future__ import annotations

import dataclasses
import sys
import typing

import pytest

import run
from nidiff_cli import build_parser
from nidiff_cli.config import PRESETS, Config, dump_toml, field_paths, load_config, train_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _annotation(path: str):
    holder: type = Config
    parts = path.split(".")
    for part in parts[:-1]:
        holder = typing.get_type_hints(holder)[part]
    return typing.get_type_hints(holder)[parts[-1]]


def _new_value(path: str, current):
    """A value of the field's type that differs from `current`, as text for --set and as TOML gives it back."""
    annotation = _annotation(path)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if typing.get_origin(base) is list:
        return "1,3", [1, 3]
    if base is bool:
        value = not bool(current)
        return str(value).lower(), value
    if base is int:
        value = (current or 0) + 3
        return str(value), value
    if base is float:
        value = (current or 0.0) * 2 + 0.5
        return repr(value), value
    if base is str:
        value = "cpu:0" if path == "device" else f"{current}_x"  # the device is checked when resolved
        return value, value
    raise AssertionError(f"no test value for {path}: {annotation}")


def _toml(capsys, argv: list[str]) -> dict:
    assert run.main(argv) == 0
    return tomllib.loads(capsys.readouterr().out)


def _lookup(tree: dict, path: str):
    for part in path.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("path", [p for p in field_paths() if p != "sampling.options"])
def test_every_field_is_set_through_set_and_round_trips_through_toml(path, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = _lookup(dataclasses.asdict(load_config("digits")), path)
    text, expected = _new_value(path, default)
    tree = _toml(capsys, ["config", "--config", "digits", "--set", f"{path}={text}"])
    assert _lookup(tree, path) == expected
    file = tmp_path / "run.toml"
    file.write_text(tomllib_dump(tree))
    again = _toml(capsys, ["config", "--config", str(file)])
    assert again == tree


def tomllib_dump(tree: dict) -> str:
    import tomli_w

    return tomli_w.dumps({"preset": "digits", **tree})


def test_sampling_options_are_set_by_set_and_by_option(capsys):
    tree = _toml(capsys, ["config", "--set", "sampling.options.snr=0.2", "--option", "corrector=langevin"])
    assert tree["sampling"]["options"] == {"snr": 0.2, "corrector": "langevin"}


def test_flags_and_set_override_the_file_and_each_other_not(capsys, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('preset = "digits"\n[training]\nlr = 0.005\nsteps = 7\n')
    tree = _toml(capsys, ["config", "--config", str(file), "--lr", "0.002", "--set", "training.steps=9"])
    assert tree["training"]["lr"] == 0.002 and tree["training"]["steps"] == 9
    assert run.main(["config", "--lr", "0.002", "--set", "training.lr=0.003"]) == 2
    assert "both" in capsys.readouterr().err


def test_unknown_key_in_a_file_is_refused_with_a_suggestion(capsys, tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[training]\nbatchsize = 7\n")
    assert run.main(["config", "--config", str(file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.batchsize" in err[0] and "training.batch_size" in err[0]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_valid_training_configs(name):
    cfg = train_config(PRESETS[name](), "runs/x")
    assert cfg.model == {"tiny": "tiny", "digits": "digits", "cifar10": "cifar10"}[name]
    assert tomllib.loads(dump_toml(PRESETS[name]()))  # None-free, valid TOML


def test_cifar10_preset_is_ddpms_recipe():
    cfg = PRESETS["cifar10"]()
    t = cfg.training
    assert (t.lr, t.batch_size, t.warmup, t.ema_decay, t.steps) == (2e-4, 128, 5000, 0.9999, 800_000)
    assert cfg.data.dataset == "cifar10" and cfg.model.name == "cifar10"
    assert (t.loss, t.weight_decay, t.grad_clip, t.lr_schedule, cfg.data.flip) == ("ddpm", 0.0, 1.0, "constant", True)
    # beta_t linear from 1e-4 to 0.02 over T = 1000 steps
    assert (cfg.sde.beta_min / cfg.sde.num_scales, cfg.sde.beta_max / cfg.sde.num_scales) == (1e-4, 0.02)
    assert (cfg.sampling.method, cfg.sampling.steps, cfg.sampling.num_samples) == ("ddpm", 1000, 50_000)


def test_a_resumed_run_keeps_its_configuration(capsys, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.toml").write_text(dump_toml(load_config("tiny")))
    assert run.main(["config", "--workdir", str(workdir), "--lr", "0.5"]) == 2
    assert "--set training.lr" in capsys.readouterr().err
    tree = _toml(capsys, ["config", "--workdir", str(workdir), "--set", "training.lr=0.5", "--train-steps", "99"])
    assert tree["training"]["lr"] == 0.5 and tree["training"]["steps"] == 99 and tree["model"]["name"] == "tiny"


def test_table_sde_filters_the_sdes_and_parsers_take_no_abbreviations():
    args = build_parser().parse_args(["table", "--sde", "nivp"])
    assert args.sdes == ("nivp",)
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        assert sub.allow_abbrev is False, name


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        run.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--lr", "--batch-size", "--train-steps", "--sde", "--ema-decay", "--keep", "--seed", "--device"):
        after = text.rsplit(flag, 1)[1][:400]
        assert "default:" in after, flag


def test_cuda_index_out_of_range_is_refused(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert run.main(["config", "--device", "cuda:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 CUDA device(s)" in err and len(err.splitlines()) == 1


def test_the_readme_toml_example_is_a_valid_configuration(tmp_path, capsys):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no TOML example"
    file = tmp_path / "my_run.toml"
    file.write_text(blocks[0])
    tree = _toml(capsys, ["config", "--config", str(file)])
    assert (
        tree["noise"]["power"] == 1.5 and tree["model"]["ch"] == 96 and tree["sampling"]["options"] == {"var": "beta"}
    )
    cfg = train_config(load_config(file), tmp_path / "run")  # a valid training configuration
    assert cfg.loss == "ddpm" and cfg.model_overrides == {"ch": 96}

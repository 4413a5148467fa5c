"""The configuration tree of a run: typed sections, named presets, TOML files and `--set section.key=value`.

    Config(sde=SDESection, noise=NoiseSection, model=ModelSection, training=TrainingSection,
           sampling=SamplingSection, data=DataSection, seed=0, device="cpu")

`load_config(name_or_file)` gives a preset (`tiny`, `digits`, `cifar10`) or reads a TOML file (sections as tables,
unknown keys refused with a "did you mean"); `apply_setting(cfg, "training.lr=2e-4")` sets one field, parsed and
type-checked by the field's annotation; `dump_toml(cfg)` writes the tree back (None fields are left out: they mean
"the default", e.g. the model preset's value or the sampler's own step count). Every run writes its resolved tree
as config.toml; `train_config` maps the tree onto training.TrainConfig, whose defaults are the tree's defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import pathlib
import sys
import types
import typing
from dataclasses import dataclass, field

import tomli_w

from training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Config",
    "PRESETS",
    "ConfigError",
    "load_config",
    "apply_setting",
    "parse_setting",
    "dump_toml",
    "config_hash",
    "config_from_dict",
    "config_from_tree",
    "field_paths",
    "train_config",
    "preset_for_dataset",
]

_TRAIN = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


class ConfigError(ValueError):
    """A bad configuration file, key or value: reported as one line."""


@dataclass
class SDESection:
    """The forward SDE (sde_lib.make_sde): name in vp, subvp, ve, nivp, nive, and its parameters."""

    name: str = _TRAIN["sde"]
    beta_min: float = _TRAIN["beta_min"]
    beta_max: float = _TRAIN["beta_max"]
    sigma_min: float = _TRAIN["sigma_min"]
    sigma_max: float = _TRAIN["sigma_max"]
    num_scales: int = _TRAIN["num_scales"]


@dataclass
class NoiseSection:
    """The covariance of nivp / nive: kind "gff" (GFFCovariance(power, dc)) or "data" (the data's spectrum)."""

    kind: str = _TRAIN["noise"]
    power: float = _TRAIN["gff_power"]
    dc: str = _TRAIN["dc"]


@dataclass
class ModelSection:
    """The network: a models.MODEL_CONFIGS name, and any UNetConfig field to override (None: the preset's)."""

    name: str = _TRAIN["model"]
    ch: int | None = None
    ch_mult: list[int] | None = None
    num_res_blocks: int | None = None
    attn_resolutions: list[int] | None = None
    dropout: float | None = None
    embedding: str | None = None
    conditional: bool | None = None
    skip_rescale: bool | None = None
    resample_with_conv: bool | None = None
    num_groups: int | None = None


@dataclass
class TrainingSection:
    """The optimisation (training.TrainConfig): loss, steps, batch, AdamW, EMA, precision and periods."""

    loss: str = _TRAIN["loss"]
    prediction: str | None = _TRAIN["prediction"]
    time_sampling: str = _TRAIN["time_sampling"]
    lognormal_mean: float = _TRAIN["lognormal_mean"]
    lognormal_std: float = _TRAIN["lognormal_std"]
    steps: int = _TRAIN["steps"]
    batch_size: int = _TRAIN["batch_size"]
    lr: float = _TRAIN["lr"]
    warmup: int = _TRAIN["warmup"]
    lr_schedule: str = _TRAIN["lr_schedule"]
    weight_decay: float = _TRAIN["weight_decay"]
    grad_clip: float = _TRAIN["grad_clip"]
    ema_decay: float = _TRAIN["ema_decay"]
    bf16: bool = _TRAIN["bf16"]
    save_every: int = _TRAIN["save_every"]
    keep: int = _TRAIN["keep"]
    log_every: int = _TRAIN["log_every"]
    sample_every: int = _TRAIN["sample_every"]


@dataclass
class SamplingSection:
    """Sampling (samplers.sample): method, steps (None: the method's default), how many images and the batch
    of one sampler call, and the method's options."""

    method: str = "pc"
    steps: int | None = 100
    num_samples: int = 256
    batch_size: int = 256
    options: dict = field(default_factory=dict)


@dataclass
class DataSection:
    """The data set (training.data.load_dataset): digits, cifar10 or folder; its root; horizontal flips (None:
    on for cifar10 and folder, off for digits)."""

    dataset: str = _TRAIN["dataset"]
    root: str | None = None
    flip: bool | None = None


@dataclass
class Config:
    """The whole tree; `seed` seeds every random draw, `device` is cpu, cuda or cuda:K."""

    sde: SDESection = field(default_factory=SDESection)
    noise: NoiseSection = field(default_factory=NoiseSection)
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    data: DataSection = field(default_factory=DataSection)
    seed: int = _TRAIN["seed"]
    device: str = _TRAIN["device"]


def _preset(**sections: dict) -> Config:
    cfg = Config()
    for name, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, name), key, value)
    return cfg


# digits: the main job's recipe for 2 CPU cores (benchmarks/RESULTS.md, main job levers). cifar10: DDPM's CIFAR-10
# recipe, each value with where Ho et al. (2020, arXiv:2006.11239) state it; the NI paper keeps DDPM's settings but for
# the noise (docs/math.md §2).
PRESETS: dict[str, typing.Callable[[], Config]] = {
    "tiny": lambda: _preset(
        model={"name": "tiny"}, training={"steps": 20, "batch_size": 16}, sampling={"steps": 10, "num_samples": 16}
    ),
    "digits": lambda: _preset(training={"steps": 600, "batch_size": 128, "lr": 2e-3, "lr_schedule": "cosine"}),
    "cifar10": lambda: _preset(
        data={"dataset": "cifar10", "flip": True},  # App. B: "random horizontal flips during training for CIFAR10"
        model={"name": "cifar10"},  # App. B's 35.7M-parameter U-Net (attention at 16x16: Sec. 4; dropout 0.1: App. B)
        # Sec. 4: "T = 1000 for all experiments", beta_t linear from 1e-4 to 0.02 = beta_min / T .. beta_max / T
        sde={"num_scales": 1000, "beta_min": 0.1, "beta_max": 20.0},
        training={
            "loss": "ddpm",  # Sec. 3.4, Eq. 14: L_simple, the eps MSE at t uniform in {1, ..., T}
            "steps": 800_000,  # App. B: 21 steps/s at batch 128, 10.6 hours to completion (about 800k steps)
            "batch_size": 128,  # App. B: "batch size of 128 for CIFAR10"
            "lr": 2e-4,  # App. B: "learning rate of 2 x 10^-4 without any sweeping"
            "weight_decay": 0.0,  # App. B: Adam, i.e. AdamW without decay
            "warmup": 5000,  # the authors' code (diffusion/scripts/run_cifar.py, warmup=5000); not in the text
            "lr_schedule": "constant",  # the same code: constant after the warm-up
            "grad_clip": 1.0,  # the same code: grad_clip=1.0; not in the text
            "ema_decay": 0.9999,  # App. B: "EMA on model parameters with a decay factor of 0.9999"
            "save_every": 10_000,
            "log_every": 100,
        },
        # Table 1 and Sec. 4: samples of the full T-step ancestral chain, FID on 50,000 samples.
        sampling={"method": "ddpm", "steps": 1000, "num_samples": 50_000},
    ),
}


def preset_for_dataset(dataset: str) -> str:
    """The preset a data set gets when no --config is given."""
    return "digits" if dataset == "digits" else "cifar10"


# ---- reading and writing -------------------------------------------------------------------------------------


def _resolve(cls: type, name: str):
    return typing.get_type_hints(cls)[name]


def field_paths(cfg: Config | None = None) -> list[str]:
    """Every settable key as "section.key" (and the root keys "seed", "device")."""
    cfg = Config() if cfg is None else cfg
    paths = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            paths += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            paths.append(f.name)
    return paths


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _locate(cfg: Config, path: str) -> tuple[object, str, object]:
    """(the dataclass holding the field, the field name, its annotation) of "section.key" or a root key."""
    known = field_paths(cfg)
    if path not in known and not path.startswith("sampling.options."):
        raise ConfigError(f"unknown config key {path!r}{_did_you_mean(path, known)}")
    parts = path.split(".")
    if len(parts) == 1:
        return cfg, parts[0], _resolve(Config, parts[0])
    section = getattr(cfg, parts[0])
    return section, parts[1], _resolve(type(section), parts[1])


def _convert(value: object, annotation, path: str) -> object:
    """value checked (and, from a string, parsed) against the field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, path)
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        items = [s for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            return [_convert(v, args[0], path) for v in items]
    elif annotation is dict and isinstance(value, dict):
        return dict(value)
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{path} must be {name}, got {value!r}")


def parse_setting(text: str) -> tuple[str, str]:
    """ "section.key=value" -> (path, raw value)."""
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set needs section.key=value, got {text!r}")
    return path.strip(), raw.strip()


def apply_setting(cfg: Config, path: str, value: object) -> None:
    """Set one field; a string value is parsed by the field's type. sampling.options.KEY takes any scalar."""
    if path.startswith("sampling.options."):
        cfg.sampling.options[path.removeprefix("sampling.options.")] = _scalar(value)
        return
    holder, name, annotation = _locate(cfg, path)
    setattr(holder, name, _convert(value, annotation, path))


def _scalar(value: object) -> object:
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(value)
    return {"true": True, "false": False}.get(value.lower(), value)


def config_from_dict(tree: dict, base: Config | None = None) -> Config:
    """A Config from nested dicts (a TOML document) over `base` (default: the defaults); unknown keys refused."""
    cfg = Config() if base is None else base
    for key, value in tree.items():
        if isinstance(value, dict) and key in _section_names():
            for sub, v in value.items():
                apply_setting(cfg, f"{key}.{sub}", v)
        else:
            apply_setting(cfg, key, value)
    return cfg


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(_resolve(Config, f.name))]


def load_config(name_or_file: str | pathlib.Path) -> Config:
    """A preset by name, or a TOML file's tree over the defaults of the preset it names in `preset = "..."`
    (default: the preset of its data set)."""
    text = str(name_or_file)
    if text in PRESETS:
        return PRESETS[text]()
    path = pathlib.Path(text)
    if path.suffix != ".toml" and not path.exists():
        raise ConfigError(f"--config {text!r} is neither a preset ({', '.join(PRESETS)}) nor a TOML file")
    try:
        tree = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {text!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {text!r} is not valid TOML: {err}") from None
    return config_from_tree(tree, text)


def config_from_tree(tree: dict, source: str) -> Config:
    """A TOML tree over the preset it names in `preset = "..."` (default: its data set's); `source` names it."""
    tree = dict(tree)
    preset = tree.pop("preset", None)
    if preset is None:
        preset = preset_for_dataset(tree.get("data", {}).get("dataset", "digits"))
    if preset not in PRESETS:
        raise ConfigError(f"{source}: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return config_from_dict(tree, PRESETS[preset]())


def _plain(value: object) -> object:
    """Nested dicts of a dataclass with the None fields left out (TOML has no null)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value


def dump_toml(cfg: Config) -> str:
    """The tree as TOML (root keys first, then one table per section; None fields left out)."""
    tree = {k: v for k, v in _plain(cfg).items() if not isinstance(v, dict)}
    tree.update({k: v for k, v in _plain(cfg).items() if isinstance(v, dict)})
    return tomli_w.dumps(tree)


def config_hash(cfg: Config) -> str:
    """SHA-256 (first 16 hex digits) of the resolved tree's TOML: the provenance of a result."""
    return hashlib.sha256(dump_toml(cfg).encode()).hexdigest()[:16]


def train_config(cfg: Config, workdir: str | pathlib.Path) -> TrainConfig:
    """The training.TrainConfig of a tree."""
    m = cfg.model
    overrides = {
        f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name != "name" and getattr(m, f.name) is not None
    }
    t = cfg.training
    return TrainConfig(
        workdir=str(workdir),
        dataset=cfg.data.dataset,
        data_root=cfg.data.root,
        flip=cfg.data.flip,
        model=m.name,
        model_overrides=overrides,
        sde=cfg.sde.name,
        gff_power=cfg.noise.power,
        dc=cfg.noise.dc,
        noise=cfg.noise.kind,
        seed=cfg.seed,
        device=cfg.device,
        beta_min=cfg.sde.beta_min,
        beta_max=cfg.sde.beta_max,
        sigma_min=cfg.sde.sigma_min,
        sigma_max=cfg.sde.sigma_max,
        num_scales=cfg.sde.num_scales,
        sample_steps=cfg.sampling.steps or _TRAIN["sample_steps"],
        sample_method=cfg.sampling.method,
        **{f.name: getattr(t, f.name) for f in dataclasses.fields(t)},
    )

"""`TrainConfig`: every setting of a training run, stored in its checkpoints as a plain dict."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from sde_lib import SDE_NAMES, default_prediction

__all__ = [
    "TrainConfig",
    "LOSS_NAMES",
    "NOISE_NAMES",
    "LR_SCHEDULES",
    "RUN_LENGTH_FIELDS",
    "lr_factor",
]

LOSS_NAMES = ("dsm", "ddpm", "ncsn")
NOISE_NAMES = ("gff", "data")
LR_SCHEDULES = ("constant", "cosine", "linear")
TIME_SAMPLINGS = ("uniform", "lognormal")


def lr_factor(k: int, warmup: int, steps: int, schedule: str) -> float:
    """The learning rate of optimiser step k + 1 (k = 0, 1, ...) over `lr`: min(1, (k + 1) / warmup) times, for
    "cosine" / "linear", a decay from 1 after the warm-up to 0 at step `steps`: with p = (k - warmup) / (steps -
    warmup) clamped to [0, 1], (1 + cos(pi p)) / 2 or 1 - p ("constant": 1)."""
    ramp = min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant" or steps <= warmup:
        return ramp
    p = min(1.0, max(0.0, (k - warmup) / (steps - warmup)))
    return ramp * ((1.0 + math.cos(math.pi * p)) / 2.0 if schedule == "cosine" else 1.0 - p)


# Fields that may change when a run is resumed: how long it runs, how often it logs and saves, where it runs, and
# init_from (read only by a fresh run: a resumed one continues from its own checkpoint).
# Every other field defines the experiment and must match the checkpoint's.
RUN_LENGTH_FIELDS = frozenset(
    {
        "workdir",
        "data_root",
        "steps",
        "save_every",
        "keep",
        "sample_every",
        "log_every",
        "device",
        "sample_steps",
        "init_from",
    }
)


@dataclass
class TrainConfig:
    """Settings of one training run (the loss is docs/math.md §2-4; see `training.losses`).

    The defaults train the `digits` model on scikit-learn's digits on a 2-core CPU in about 3 minutes to
    digit-like EMA samples. The DDPM CIFAR-10 recipe is model="cifar10", lr=2e-4, batch_size=128,
    warmup=5000, ema_decay=0.9999 and several hundred thousand steps.

    workdir       directory of the run: checkpoints/, metrics.jsonl, samples/.
    dataset       a `training.data.load_dataset` name (digits, cifar10, folder); `data_root` its location.
    flip          random horizontal flips of training images; None: on for cifar10 and folder (DDPM's CIFAR-10
                  setting), off for digits (mirrored digits are not digits).
    model         a `models.create_model` config name; `model_overrides` replaces UNetConfig fields.
    sde           one of sde_lib.SDE_NAMES; vp / subvp / ve are isotropic and ignore `noise`.
    noise         "gff": GFFCovariance(shape, gff_power, dc); "data": SpectralCovariance.from_data on the
                  training images (the spectrum is stored in the checkpoint).
    loss          "dsm" (continuous, eps-parameterised), "ddpm" (NI-DDPM discrete, VP family), "ncsn"
                  (unconditional u(x), score u / sigma, VE family).
    prediction    what the network outputs for "dsm" / "ddpm": "eps", "x0" or "v" (sde_lib.PREDICTIONS; the loss
                  is the same eps regression, docs/math.md §2); None: sde_lib.default_prediction(sde), "v" for blur
                  and heat (whose data prediction an eps-network cannot keep bounded, §11), "eps" otherwise.
    time_sampling "dsm": t ~ U(0, 1) ("uniform"), or "lognormal": ln(std(t) / a(t)) ~ N(lognormal_mean,
                  lognormal_std^2), i.e. the loss weighted by that density of t (training.losses.DSMLoss).
    steps         total optimiser steps (a resumed run continues to this number).
    batch_size    global batch (split evenly over DDP ranks).
    lr, warmup    AdamW learning rate, reached linearly over `warmup` steps; `weight_decay` AdamW's decay.
    lr_schedule   after the warm-up: "constant", or "cosine" / "linear" decay to 0 at step `steps` (lr_factor; a
                  resumed run with more steps decays over the new total).
    grad_clip     max global gradient norm (0 disables clipping; the norm is still checked for finiteness).
    ema_decay     decay of the exponential moving average of the weights, after a warm-up: the update that
                  follows n others uses min(ema_decay, (1 + n) / (10 + n)) (training.ema).
    save_every    checkpoint period in steps (a checkpoint is also written at the end and on SIGTERM/SIGINT);
                  `keep` checkpoints are kept.
    sample_every  period of the EMA sample grid PNG (0 disables it); `sample_count`, `sample_method`,
                  `sample_steps` are passed to samplers.sample (method None: the sampler's default).
    log_every     period of the JSONL metrics line and the progress-bar update.
    seed          seeds the weights, the data order and the per-step noise seeds.
    device        "cpu", "cuda" or "cuda:k" (under torchrun each rank uses cuda:LOCAL_RANK).
    bf16          bfloat16 autocast of the network on CUDA (ignored on CPU).
    beta_min, beta_max, sigma_min, sigma_max, num_scales   the SDE's parameters (sde_lib.make_sde).
    init_from     fine-tuning: a .safetensors file of training.export_weights; a fresh run (no checkpoint in
                  workdir) starts the network and its EMA from its weights, which must be of the same architecture
                  and image shape (model + model_overrides; dropout may differ). A resumed run ignores it.
    """

    workdir: str
    dataset: str = "digits"
    data_root: str | None = None
    flip: bool | None = None
    model: str = "digits"
    model_overrides: dict = field(default_factory=dict)
    sde: str = "nivp"
    gff_power: float = 1.0
    dc: str = "one"
    noise: str = "gff"
    loss: str = "dsm"
    prediction: str | None = None
    time_sampling: str = "uniform"
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    save_every: int = 200
    keep: int = 3
    sample_every: int = 0
    sample_count: int = 64
    sample_method: str | None = None
    sample_steps: int = 100
    log_every: int = 25
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    init_from: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.workdir, str) or not self.workdir:
            raise ValueError(f"workdir must be a non-empty path string, got {self.workdir!r}")
        if self.sde not in SDE_NAMES:
            raise ValueError(f"sde must be one of {SDE_NAMES}, got {self.sde!r}")
        if self.noise not in NOISE_NAMES:
            raise ValueError(f"noise must be one of {NOISE_NAMES}, got {self.noise!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if self.prediction is None:
            self.prediction = default_prediction(self.sde)
        if self.prediction not in ("eps", "x0", "v") or (self.loss == "ncsn" and self.prediction != "eps"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v' (and 'eps' for the ncsn loss, whose network "
                             f"predicts u), got {self.prediction!r} with loss {self.loss!r}")  # fmt: skip
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}")
        if self.time_sampling != "uniform" and self.loss != "dsm":
            raise ValueError(f"time_sampling {self.time_sampling!r} needs the continuous loss 'dsm', not {self.loss!r}")
        if not self.lognormal_std > 0:
            raise ValueError(f"lognormal_std must be > 0, got {self.lognormal_std}")
        if not isinstance(self.model_overrides, dict):
            raise TypeError(f"model_overrides must be a dict, got {type(self.model_overrides).__name__}")
        for name in ("steps", "batch_size", "log_every", "keep", "sample_count", "sample_steps", "num_scales"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "save_every", "sample_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"grad_clip and weight_decay must be >= 0, got {self.grad_clip}, {self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.init_from is not None and not (
            isinstance(self.init_from, str) and self.init_from.endswith(".safetensors")
        ):
            raise ValueError(
                f"init_from must be the path of a .safetensors file of training.export_weights, got {self.init_from!r}"
            )

    def to_dict(self) -> dict:
        """Plain dict of builtins (what checkpoints store); `TrainConfig.from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild a config from `to_dict()` output; unknown keys are an error (a newer or foreign checkpoint)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**d)

    def experiment_mismatch(self, other: TrainConfig) -> dict[str, tuple]:
        """Fields (outside RUN_LENGTH_FIELDS) whose values differ: {name: (self's, other's)}."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in RUN_LENGTH_FIELDS and mine[k] != theirs[k]}

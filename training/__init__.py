"""Training of eps-predicting score networks with non-isotropic noise (docs/math.md §2-4).

Public API (stable):

    from training import TrainConfig, train, load_checkpoint, load_model, score_fn_for, CheckpointError
    from training import log_scalars, export_weights, load_weights

    cfg = TrainConfig(workdir="runs/digits_nivp", dataset="digits", model="digits", sde="nivp", loss="dsm",
                      noise="gff", steps=600, batch_size=64, sample_every=200)
    result = train(cfg, progress=True)
        # Resumes from the newest readable checkpoint in cfg.workdir (an unreadable newest one is skipped with a
        # warning) and trains to cfg.steps. Returns {"step", "start_step", "losses", "stopped_by", "checkpoint",
        # "seconds", "model", "ema_model"}. SIGTERM / SIGINT: the current step finishes, a checkpoint is written,
        # train returns (stopped_by = the signal's name). A non-finite loss or gradient raises FloatingPointError
        # naming the step.
        # Under torchrun (WORLD_SIZE > 1) it trains with DDP (gloo on CPU, nccl on CUDA); rank 0 alone writes.
    model, sde, cfg = load_model("runs/digits_nivp", ema=True, device="cpu")   # eval mode, EMA weights
    score_fn = score_fn_for(model, sde, loss_for(cfg))                          # for sde.reverse / samplers
    ckpt = load_checkpoint("runs/digits_nivp")     # payload dict of the newest readable checkpoint (or of a file)

    log_scalars("runs/digits_nivp", {"eval/frechet_distance": 3.2}, step=600)  # appended to the run's TensorBoard

    export_weights("runs/digits_nivp", "digits.safetensors")  # -> Path; EMA weights, config, step (training.export)
    model, sde, cfg = load_model("digits.safetensors")        # as from the workdir; any `ema` gives the EMA weights
    weights, cfg, spectrum, step = load_weights("digits.safetensors")
    TrainConfig(workdir="runs/ft", ..., init_from="digits.safetensors")  # fine-tuning: a fresh run starts from it

Files in a workdir: checkpoints/ckpt_<step>.pt (the last cfg.keep), metrics.jsonl (one JSON line every
cfg.log_every steps: step, loss, grad_norm, lr, steps_per_s, images_per_s, time), samples/step_<step>.png (every
cfg.sample_every steps, EMA weights), events.out.tfevents.* (TensorBoard, training.events: train/loss, train/lr,
train/grad_norm as in metrics.jsonl, the sample grids as the image samples/ema, and what log_scalars appends).

Checkpoints load with torch.load(weights_only=True): CheckpointError (a ValueError) for a missing, truncated or
corrupted file, UnsafeCheckpointError (a CheckpointError) for a pickle that would run code (it is not run). A
missing, truncated, corrupted or foreign .safetensors file likewise raises CheckpointError.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from sde_lib import SDE

from .build import build_model, build_sde
from .checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint
from .config import LOSS_NAMES, TrainConfig
from .events import log_scalars
from .export import export_weights, load_weights
from .loop import train
from .losses import DiffusionLoss, DSMLoss, NCSNLoss, NIDDPMLoss, get_loss, loss_for, score_fn_for

__all__ = [
    "TrainConfig",
    "LOSS_NAMES",
    "train",
    "load_checkpoint",
    "load_model",
    "log_scalars",
    "export_weights",
    "load_weights",
    "CheckpointError",
    "UnsafeCheckpointError",
    "DiffusionLoss",
    "NIDDPMLoss",
    "DSMLoss",
    "NCSNLoss",
    "get_loss",
    "loss_for",
    "score_fn_for",
]


def load_model(
    path_or_workdir: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, SDE, TrainConfig]:
    """(network in eval mode, its SDE, its TrainConfig) from a checkpoint file, a workdir's newest readable
    checkpoint, or a .safetensors file of export_weights.

    ema=True loads the EMA weights (for sampling and evaluation), ema=False the raw training weights; a
    .safetensors export holds the EMA weights only, which both load. The SDE is rebuilt from the config (and the
    stored spectrum for noise="data"). Raises CheckpointError for an unreadable file.
    """
    path = Path(path_or_workdir)
    if path.suffix == ".safetensors" and not path.is_dir():
        weights, cfg, spectrum, _ = load_weights(path)
    else:
        ckpt = load_checkpoint(path)
        cfg = TrainConfig.from_dict(ckpt["config"])
        weights, spectrum = ckpt["ema"]["weights"] if ema else ckpt["model"], ckpt["noise_spectrum"]
    model = build_model(cfg)
    model.load_state_dict(weights)
    model.to(device).eval()
    sde = build_sde(cfg, tuple(model.config.image_shape), spectrum)
    return model, sde, cfg

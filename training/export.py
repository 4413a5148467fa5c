"""Weights-only export of a run with safetensors, its reader, and fine-tuning from an export.

    export_weights("runs/digits_nivp", "digits_nivp.safetensors")  # EMA weights of the newest readable checkpoint
    model, sde, cfg = training.load_model("digits_nivp.safetensors")  # same network and SDE as from the workdir
    TrainConfig(workdir="runs/ft", init_from="digits_nivp.safetensors", ...)  # fine-tune from the export

The file (written atomically) holds the EMA state_dict of the network and, for a data-matched noise covariance
(noise="data"), its spectrum as the tensor SPECTRUM_KEY; its metadata are format "nidiff-weights", version "1",
config (JSON of TrainConfig.to_dict()), step (decimal) and sha256 (checkpoint.content_digest of the tensors and
the other metadata entries, which safetensors does not check itself). It is about a quarter of a checkpoint (no
raw weights, no AdamW moments), and loading it runs no code (safetensors has no pickle).
A missing, truncated, corrupted or foreign file raises CheckpointError with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .build import model_overrides
from .checkpoint import CheckpointError, content_digest, load_checkpoint, write_atomically
from .config import TrainConfig

__all__ = ["WEIGHTS_FORMAT", "WEIGHTS_VERSION", "SPECTRUM_KEY", "export_weights", "load_weights", "init_from_weights"]

WEIGHTS_FORMAT = "nidiff-weights"
WEIGHTS_VERSION = "1"
SPECTRUM_KEY = "__noise_spectrum__"
_SUFFIX = ".safetensors"


def _digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    return content_digest({"tensors": tensors, "metadata": {k: v for k, v in metadata.items() if k != "sha256"}})


def export_weights(path_or_workdir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Write the EMA weights of a checkpoint file, or of a workdir's newest readable checkpoint, to `out_file`
    (a .safetensors file; see the module docstring for its content). Returns the path written.

    Raises ValueError if out_file does not end in .safetensors, CheckpointError for an unreadable checkpoint.
    """
    out = Path(out_file)
    if out.suffix != _SUFFIX:
        raise ValueError(f"export_weights writes a {_SUFFIX} file, got {str(out)!r}")
    ckpt = load_checkpoint(path_or_workdir)
    tensors = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in ckpt["ema"]["weights"].items()
    }
    if ckpt["noise_spectrum"] is not None:
        tensors[SPECTRUM_KEY] = ckpt["noise_spectrum"].cpu().clone(memory_format=torch.contiguous_format)
    metadata = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "config": json.dumps(TrainConfig.from_dict(ckpt["config"]).to_dict()),
        "step": str(int(ckpt["step"])),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    from safetensors.torch import save as safetensors_bytes

    data = safetensors_bytes(tensors, metadata=metadata)
    return write_atomically(out, lambda f: f.write(data))


def load_weights(file: str | os.PathLike) -> tuple[dict[str, Tensor], TrainConfig, Tensor | None, int]:
    """(EMA state_dict, TrainConfig, noise spectrum or None, step) of a file written by export_weights.

    Raises CheckpointError (one line) for a missing or truncated file, one that is not safetensors, lacks the
    nidiff metadata or has another version, whose content does not match its SHA-256, or whose config is unreadable.
    """
    path = Path(file)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"weights file {path} is truncated or not a safetensors file: {detail}") from e
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path} is not a nidiff weights file (no metadata format {WEIGHTS_FORMAT!r})")
    if metadata.get("version") != WEIGHTS_VERSION:
        raise CheckpointError(f"{path} has version {metadata.get('version')!r}; this nidiff reads {WEIGHTS_VERSION!r}")
    if metadata.get("sha256") != _digest(tensors, metadata):
        raise CheckpointError(f"weights file {path} is corrupted: its content does not match the stored SHA-256")
    try:
        cfg = TrainConfig.from_dict(json.loads(metadata["config"]))
        step = int(metadata["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"weights file {path} has an unreadable config or step: {type(e).__name__}: {e}") from e
    spectrum = tensors.pop(SPECTRUM_KEY, None)
    return tensors, cfg, spectrum, step


def _network_fields(cfg: TrainConfig) -> dict:
    """UNetConfig fields of the run's network (MODEL_CONFIGS[cfg.model] with model_overrides(cfg)) but dropout."""
    from models import MODEL_CONFIGS

    if cfg.model not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {cfg.model!r}")
    fields = dataclasses.replace(MODEL_CONFIGS[cfg.model], **model_overrides(cfg)).to_dict()
    del fields["dropout"]
    return fields


def init_from_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Fine-tuning: load the weights of the export cfg.init_from into `model`, the network of the run `cfg`.

    Raises ValueError (one line) when the exported network is another one: a UNetConfig field other than
    dropout differs (architecture or image shape); CheckpointError when the file is unreadable.
    """
    weights, source, _, _ = load_weights(cfg.init_from)
    mine, theirs = _network_fields(cfg), _network_fields(source)
    differ = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
    if differ:
        raise ValueError(
            f"init_from {cfg.init_from}: the exported network differs from this run's in {differ} "
            "(exported, this run); fine-tuning needs the same architecture and image shape"
        )
    model.load_state_dict(weights)

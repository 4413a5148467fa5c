"""Crash-safe checkpoints: atomic writes, a content digest, safe loading and fallback to the newest readable one.

A checkpoint is a dict of tensors and Python builtins saved with torch.save as `checkpoints/ckpt_<step>.pt`
in the run's workdir. Writing goes to a temporary file in the same directory, which is flushed and fsynced,
then renamed over the final name, and the directory is fsynced: a reader sees either the complete new file
or none. A SHA-256 digest of the content, stored in the file, detects silent corruption (torch.load does not).
Loading uses torch.load(weights_only=True), so a file whose pickle would import or call anything outside
tensors and builtins is refused (UnsafeCheckpointError) without running it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "CHECKPOINT_DIR",
    "checkpoint_path",
    "list_checkpoints",
    "write_atomically",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "prune_checkpoints",
]

CHECKPOINT_DIR = "checkpoints"
FORMAT = "nidiff-checkpoint-1"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
# Test hook: seconds to sleep after the temporary file is written and before it is committed (renamed),
# so that a test can kill the writer mid-checkpoint.
WRITE_DELAY_ENV = "NIDIFF_CHECKPOINT_WRITE_DELAY"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted or not a nidiff checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle references code (globals outside tensors and builtins); it was not run."""


def checkpoint_path(workdir: str | os.PathLike, step: int) -> Path:
    """workdir/checkpoints/ckpt_<step, 8 digits>.pt."""
    return Path(workdir) / CHECKPOINT_DIR / f"ckpt_{int(step):08d}.pt"


def list_checkpoints(workdir: str | os.PathLike) -> list[Path]:
    """The committed checkpoints of a workdir, oldest (lowest step) first; temporary files are not listed."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def _digest(obj, h) -> None:
    """Feed a canonical serialisation of a nested dict/list/tuple/tensor/scalar structure into hash h."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            _digest(k, h)
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())


def content_digest(payload: dict) -> str:
    """SHA-256 (hex) of a checkpoint payload's content: tensor dtypes, shapes and bytes, and all other values."""
    h = hashlib.sha256()
    _digest(payload, h)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace `path` atomically: write(f) fills a temporary file in the same directory, which is
    flushed, fsynced and renamed over `path`, then the directory is fsynced. Readers see the old file or the
    complete new one; on any error the temporary file is removed and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write `payload` (tensors and builtins only) with its SHA-256 to `path` through write_atomically."""
    record = {"format": FORMAT, "sha256": content_digest(payload), "payload": payload}

    def write(f: BinaryIO) -> None:
        torch.save(record, f)
        f.flush()
        delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)

    return write_atomically(path, write)


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and verify one checkpoint file; raises CheckpointError / UnsafeCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"{path} holds exported weights only (training.export_weights), not a training checkpoint; "
            "load it with training.load_model"
        )
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: its pickle needs objects beyond tensors and builtins (weights_only=True); "
            f"it may run arbitrary code and was not executed. Details: {str(e).splitlines()[-1]}"
        ) from e
    except (RuntimeError, EOFError, KeyError, OSError, UnicodeDecodeError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted: {type(e).__name__}: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("payload"), dict):
        raise CheckpointError(f"{path} is not a nidiff checkpoint (format {FORMAT!r})")
    if content_digest(record["payload"]) != record.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted: its content does not match the stored SHA-256")
    return record["payload"]


def load_latest_checkpoint(workdir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest readable checkpoint of a workdir (None if it has none).

    An unreadable newer checkpoint (truncated, corrupted, refused as unsafe) is skipped with a warning and
    the previous one is tried; if checkpoints exist but none is readable, CheckpointError is raised.
    """
    paths = list_checkpoints(workdir)
    errors = []
    for path in reversed(paths):
        try:
            return load_checkpoint_file(path, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"skipping unreadable checkpoint: {e}", RuntimeWarning, stacklevel=2)
    if paths:
        raise CheckpointError(f"no readable checkpoint in {Path(workdir) / CHECKPOINT_DIR}: " + " | ".join(errors))
    return None


def load_checkpoint(path_or_workdir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's payload dict from a file, or from the newest readable checkpoint of a workdir.

    Raises CheckpointError (a ValueError) for a missing, truncated or corrupted file and UnsafeCheckpointError
    for a pickle that would run code.
    """
    path = Path(path_or_workdir)
    if path.is_dir():
        payload = load_latest_checkpoint(path, map_location)
        if payload is None:
            raise CheckpointError(f"{path} holds no checkpoints (expected {CHECKPOINT_DIR}/ckpt_<step>.pt)")
        return payload
    return load_checkpoint_file(path, map_location)


def prune_checkpoints(workdir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, and stale temporary files; returns the deleted paths."""
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folder = Path(workdir) / CHECKPOINT_DIR
    doomed = list_checkpoints(workdir)[: -int(keep)]
    if folder.is_dir():
        doomed += [p for p in folder.iterdir() if p.name.startswith(".ckpt_") and ".tmp-" in p.name]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed

"""Result rows of `run.py study` and `run.py table`: the CSV columns, the noise strings, locked appends.

One row per cell (sde, noise, loss, sampler, steps, seed, train_steps: the model's training budget). A noise
string names the covariance of a model:

    white                  the isotropic SDEs (vp, subvp, ve)
    gff:<power>            GFF noise with spectrum |k|^-2p and the DC bin at one (nivp, nive)
    gff:<power>:dc=zero    the same with the zero-DC rule
    data                   the training set's average power spectrum (nivp, nive)

Rows are appended one at a time under an exclusive lock (fcntl.flock), flushed and fsynced, so several processes
can share one CSV and an interrupted run loses no finished row.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import pathlib
from dataclasses import dataclass

from torch import Tensor

import evaluation
from evaluation.stats import frechet_bootstrap
from sde_lib import COLOURED_SDE_NAMES

from .common import UsageError
from .config import Config

__all__ = ["FIELDS", "KEY", "Noise", "parse_noise", "noise_of", "set_noise", "digits_scores", "cell_row", "row_key",
           "append_row", "read_rows", "write_rows"]  # fmt: skip

FIELDS = ["sde", "noise", "loss", "sampler", "steps", "nfe", "seed", "train_steps", "n", "fd", "fd_lo", "fd_hi",
          "floor_fd", "floor_sd", "precision", "recall", "bpd", "commit", "torch"]  # fmt: skip
KEY = ("sde", "noise", "loss", "sampler", "steps", "seed", "train_steps")  # what identifies a cell


@dataclass(frozen=True)
class Noise:
    """A model's noise: kind "white", "gff" (power, dc) or "data"; str() is its canonical string."""

    kind: str
    power: float = 1.0
    dc: str = "one"

    def __str__(self) -> str:
        if self.kind != "gff":
            return self.kind
        return f"gff:{self.power:g}" + (":dc=zero" if self.dc == "zero" else "")

    def fits(self, sde: str) -> bool:
        """White noise belongs to the isotropic SDEs, gff / data to nivp and nive."""
        return (self.kind == "white") == (sde not in COLOURED_SDE_NAMES)


def parse_noise(text: str) -> Noise:
    """The Noise of a string (module docstring); `gff:1.0:dc=one` reads as `gff:1`. UsageError otherwise."""
    parts = str(text).strip().split(":")
    bad = UsageError(f"noise {text!r}: expected white, data, gff:<power> or gff:<power>:dc=zero")
    if parts in (["white"], ["data"]):
        return Noise(parts[0])
    if parts[0] != "gff" or len(parts) not in (2, 3):
        raise bad
    try:
        power = float(parts[1])
    except ValueError:
        raise bad from None
    if not power >= 0 or power == float("inf"):
        raise bad
    dc = "one"
    if len(parts) == 3:
        if parts[2] not in ("dc=one", "dc=zero"):
            raise bad
        dc = parts[2].removeprefix("dc=")
    return Noise("gff", power, dc)


def noise_of(cfg: Config) -> Noise:
    """The noise a configuration trains with (white for the isotropic SDEs, whatever its noise section says)."""
    if cfg.sde.name not in COLOURED_SDE_NAMES:
        return Noise("white")
    if cfg.noise.kind == "data":
        return Noise("data")
    return Noise("gff", cfg.noise.power, cfg.noise.dc)


def set_noise(cfg: Config, noise: Noise) -> None:
    """Set cfg.noise to `noise` (white leaves the section as it is: the isotropic SDEs ignore it)."""
    if noise.kind == "data":
        cfg.noise.kind = "data"
    elif noise.kind == "gff":
        cfg.noise.kind, cfg.noise.power, cfg.noise.dc = "gff", noise.power, noise.dc


def digits_scores(metric: evaluation.DigitsMetric, x: Tensor, floor: evaluation.RealFloor) -> dict:
    """{fd, fd_lo, fd_hi (bootstrap interval, docs/math.md §10), floor_fd, floor_sd, precision, recall} of samples
    x in the digits feature space."""
    scores = metric.evaluate(x)
    fd = frechet_bootstrap(metric.features(x), metric.reference)
    return {"fd": fd.value, "fd_lo": fd.lo, "fd_hi": fd.hi, "floor_fd": floor.mean, "floor_sd": floor.sd,
            "precision": scores["precision"], "recall": scores["recall"]}  # fmt: skip


def cell_row(cfg: Config, nfe: float, n: int, scores: dict, origin: dict, bpd: float | None = None) -> dict:
    """The row of a cell: cfg names the model (sde, noise, loss, seed, training.steps: its budget) and the
    sampler (sampling.method, steps); `scores` holds fd .. recall (a missing one stays empty), `origin` is
    common.provenance (commit, torch)."""
    return {"sde": cfg.sde.name, "noise": str(noise_of(cfg)), "loss": cfg.training.loss,
            "sampler": cfg.sampling.method, "steps": cfg.sampling.steps, "nfe": nfe, "seed": cfg.seed,
            "train_steps": cfg.training.steps, "n": n, **scores, "bpd": bpd, "commit": origin["commit"],
            "torch": origin["torch"]}  # fmt: skip


def row_key(row: dict) -> tuple[str, ...]:
    """The cell of a row as strings, the values of KEY (sde, noise, loss, sampler, steps, seed, train_steps)."""
    return tuple(str(row[k]) for k in KEY)


def _line(row: dict) -> str:
    out = io.StringIO()
    csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n").writerow({k: _cell(row.get(k)) for k in FIELDS})
    return out.getvalue()


def _cell(value: object) -> object:
    """None (not measured) becomes an empty cell."""
    return "" if value is None else value


def append_row(path: pathlib.Path, row: dict) -> None:
    """Append one row (writing the header into an empty file), under an exclusive lock, flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            text = (",".join(FIELDS) + "\n" if f.tell() == 0 else "") + _line(row)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_rows(path: pathlib.Path, repair: bool = False) -> list[dict]:
    """The rows of a results CSV ([] when it does not exist). A last line cut short by a killed writer is
    dropped, and with repair=True also cut from the file (under the lock). A header other than FIELDS is a
    UsageError (a CSV of another program or version)."""
    if not path.is_file():
        return []
    with open(path, "r+" if repair else "r", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX if repair else fcntl.LOCK_SH)
        try:
            text = f.read()
            complete = text[: text.rfind("\n") + 1]
            if repair and complete != text:
                f.truncate(len(complete.encode()))
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    reader = csv.DictReader(io.StringIO(complete))
    if complete and reader.fieldnames != FIELDS:
        raise UsageError(f"{path}: columns {reader.fieldnames} are not the results columns {FIELDS}")
    return list(reader)


def write_rows(path: pathlib.Path, rows: list[dict]) -> None:
    """Write the whole CSV (header and rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(FIELDS) + "\n" + "".join(_line(r) for r in rows))

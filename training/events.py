"""TensorBoard event files of a run, written into its workdir (`tensorboard --logdir runs/` shows every run).

Training (rank 0) writes the scalars train/loss, train/lr and train/grad_norm every log_every steps (the values
of the metrics.jsonl line) and the EMA sample grid as the image samples/ema whenever a grid PNG is written.
`log_scalars` appends other scalars, e.g. eval/frechet_distance, to the same run. tensorboard is imported only
when a writer is opened, so `import training` does not import it; without tensorboard installed, training
warns once and writes no events.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["open_writer", "log_scalars"]


def open_writer(workdir: str | os.PathLike, purge_step: int | None = None) -> SummaryWriter:
    """A torch.utils.tensorboard.SummaryWriter on a new event file in `workdir`.

    purge_step: a resumed run passes its checkpoint's step + 1, so TensorBoard hides the events that an
    interrupted earlier session wrote at steps >= purge_step (after its last checkpoint; they are written again).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard events (metrics.jsonl is written)", stacklevel=2)
        return _NoEvents()
    return SummaryWriter(log_dir=str(workdir), purge_step=purge_step)


class _NoEvents:
    """The writer used when tensorboard is absent (e.g. a bare GPU image): every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def log_scalars(workdir: str | os.PathLike, scalars: dict[str, float], step: int) -> None:
    """Append scalars {tag: value} at `step` to the event files of the run in `workdir`; flushed and closed on return.

    For evaluation metrics of a trained run (tags like eval/frechet_distance, step = the checkpoint's step).
    The workdir must exist (a run directory); values are stored as float32 by TensorBoard.
    """
    if not Path(workdir).is_dir():
        raise FileNotFoundError(f"log_scalars: {workdir} is not a run directory")
    values = {str(tag): float(value) for tag, value in scalars.items()}
    with open_writer(workdir) as writer:
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=int(step))

"""The training loop: AdamW with warm-up, gradient clipping, EMA, bf16 autocast on CUDA, DDP, checkpoints.

One step: x_0 = next batch of this rank; seed = derive_seed(cfg.seed, step, rank); loss = the configured
loss (training.losses, which builds x_t through kernels.perturb with that seed); backward; clip the global
gradient norm; stop with FloatingPointError if the loss or the norm is not finite (the checkpoints written
before stay as they are); AdamW step; scheduler step; EMA update.

Exact resume: a checkpoint holds the model, EMA, optimiser and scheduler states, the step, every rank's RNG
states and the data position, so N steps + resume + M steps equals N + M straight steps (on CPU, bitwise).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from samplers.progress import progress as progress_bar

from .build import build_model, build_sde, fit_noise_spectrum, needs_spectrum
from .checkpoint import checkpoint_path, load_latest_checkpoint, prune_checkpoints, save_checkpoint
from .config import TrainConfig, lr_factor
from .data_order import BatchOrder
from .distributed import DistContext, all_gather, any_rank, mean_over_ranks, setup_distributed, teardown_distributed
from .ema import create_ema, ema_state_dict, load_ema_state_dict
from .events import open_writer
from .export import init_from_weights
from .losses import loss_for
from .rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from .sample_grid import save_sample_grid

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["train", "Trainer", "METRICS_FILE", "SAMPLES_DIR"]

METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
# Tags that keep the per-rank global RNG streams apart from the weight-initialisation stream.
_RANK_STREAM = 1


class _StopOnSignal:
    """While active, SIGTERM and SIGINT set `requested` instead of killing the process (main thread only)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Everything of one run, built from its config and resumed from its workdir's newest readable checkpoint.

    `train_step()` performs one optimiser step, `save()` writes a checkpoint, `run()` is the loop of `train`
    (which also sets up and tears down torch.distributed). Building a Trainer writes no files.
    """

    def __init__(self, cfg: TrainConfig, ctx: DistContext | None = None, dataset: Dataset | None = None):
        ctx = DistContext(0, 1, 0, torch.device(cfg.device), owns_group=False) if ctx is None else ctx
        self.cfg, self.ctx = cfg, ctx
        self.workdir = Path(cfg.workdir)
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {ctx.world_size} DDP ranks")
        if dataset is None:
            from .data import load_dataset

            flip = cfg.dataset != "digits" if cfg.flip is None else cfg.flip
            dataset = load_dataset(cfg.dataset, root=cfg.data_root, split="train", flip=flip)
        self.dataset = dataset

        ckpt = load_latest_checkpoint(self.workdir)
        if ckpt is not None:
            stored = TrainConfig.from_dict(ckpt["config"])
            mismatch = cfg.experiment_mismatch(stored)
            if mismatch:
                raise ValueError(
                    f"{self.workdir} holds a checkpoint of a different experiment; differing fields "
                    f"(this config, checkpoint): {mismatch}. Use another workdir."
                )

        seed_everything(cfg.seed)
        model = build_model(cfg)
        self.shape = tuple(model.config.image_shape)
        item_shape = tuple(torch.as_tensor(dataset[0]).shape)
        if item_shape != self.shape:
            raise ValueError(f"dataset images have shape {item_shape} but model {cfg.model!r} expects {self.shape}")
        if ckpt is None and cfg.init_from is not None:
            init_from_weights(model, cfg)  # fine-tuning; the EMA below starts as a copy of these weights
        self.model = model.to(ctx.device)
        self.ema = create_ema(self.model, cfg.ema_decay)
        if ckpt is not None:
            self.spectrum = ckpt["noise_spectrum"]
        else:
            self.spectrum = fit_noise_spectrum(dataset) if needs_spectrum(cfg) else None
        self.sde = build_sde(cfg, self.shape, self.spectrum)
        self.loss_fn = loss_for(cfg)
        self.loss_fn.check_sde(self.sde)
        self.net: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
            if ctx.distributed
            else self.model
        )
        # The fused AdamW kernel: one pass over all parameters (on the digits network a step of 2 ms instead of 11).
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=ctx.device.type in ("cpu", "cuda")
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(lr_factor, warmup=cfg.warmup, steps=cfg.steps, schedule=cfg.lr_schedule)
        )
        self.order = BatchOrder(dataset, cfg.batch_size // ctx.world_size, ctx.rank, ctx.world_size, cfg.seed)
        self.step = 0
        seed_everything(derive_seed(cfg.seed, _RANK_STREAM, ctx.rank))
        if ckpt is not None:
            self._restore(ckpt)
        self.last_checkpoint: Path | None = checkpoint_path(self.workdir, self.step) if ckpt is not None else None

    # ---- checkpoints -----------------------------------------------------------------------------
    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        load_ema_state_dict(self.ema, ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.order.load_state_dict(ckpt["data"])
        self.step = int(ckpt["step"])
        rng = ckpt["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank], self.ctx.device)
        else:
            warnings.warn(
                f"checkpoint written by {len(rng)} rank(s), resumed on {self.ctx.world_size}: the RNG streams "
                "restart from seeds (the data order and noise stay deterministic, but not equal to an unbroken run)",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.ctx.is_main:
            self._truncate_metrics(self.step)

    def save(self) -> Path:
        """Checkpoint on rank 0 (all ranks must call it: their RNG states are gathered)."""
        rng = all_gather(self.ctx, capture_rng_state(self.ctx.device))
        path = checkpoint_path(self.workdir, self.step)
        if self.ctx.is_main:
            payload = {
                "step": self.step,
                "config": self.cfg.to_dict(),
                "model_config": self.model.config.to_dict(),
                "model": self.model.state_dict(),
                "ema": ema_state_dict(self.ema),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "data": self.order.state_dict(),
                "noise_spectrum": self.spectrum,
            }
            save_checkpoint(payload, path)
            prune_checkpoints(self.workdir, self.cfg.keep)
        self.last_checkpoint = path
        return path

    # ---- logging ---------------------------------------------------------------------------------
    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines past `step` (written by a run that crashed after its last checkpoint)."""
        path = self.workdir / METRICS_FILE
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def _log(self, record: dict, events: SummaryWriter) -> None:
        """Append a metrics.jsonl line and its loss, lr and grad norm to the TensorBoard events."""
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name in ("loss", "lr", "grad_norm"):
            events.add_scalar(f"train/{name}", record[name], global_step=record["step"])

    def _events(self) -> contextlib.AbstractContextManager:
        """The run's TensorBoard writer on rank 0 (hiding events past a resumed checkpoint), None elsewhere."""
        if not self.ctx.is_main:
            return contextlib.nullcontext()
        return open_writer(self.workdir, purge_step=self.step + 1 if self.step else None)

    # ---- the loop --------------------------------------------------------------------------------
    def train_step(self, signals: _StopOnSignal | None = None) -> tuple[float, float, bool]:
        """One optimiser step; returns (loss, gradient norm, whether any rank received SIGTERM/SIGINT)."""
        cfg, ctx = self.cfg, self.ctx
        x0 = self.order.next_batch().to(ctx.device, non_blocking=True)
        seed = derive_seed(cfg.seed, self.step, ctx.rank)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and ctx.device.type == "cuda" else None
        with autocast or contextlib.nullcontext():
            loss = self.loss_fn(self.net, self.sde, x0, seed)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
        local_bad = not (math.isfinite(loss_value) and math.isfinite(norm_value))
        any_bad, stop = any_rank(self.ctx, [local_bad, signals is not None and signals.requested is not None])
        if any_bad:
            what = f"loss {loss_value}, grad norm {norm_value}" if local_bad else "on another rank"
            raise FloatingPointError(
                f"non-finite loss or gradient at step {self.step + 1} ({what}); stopped without saving, "
                f"the last good checkpoint is {self.last_checkpoint}"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return loss_value, norm_value, stop

    def _sample_grid(self, events: SummaryWriter) -> None:
        cfg = self.cfg
        grid = save_sample_grid(
            self.ema.module,
            self.sde,
            self.loss_fn,
            self.workdir / SAMPLES_DIR / f"step_{self.step:08d}.png",
            count=cfg.sample_count,
            method=cfg.sample_method,
            steps=cfg.sample_steps,
            seed=cfg.seed,
        )
        events.add_image("samples/ema", grid, global_step=self.step)

    def run(self, progress: bool) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
        start_step, losses = self.step, []
        window_loss, window_norm, window_n = 0.0, 0.0, 0
        started = last_log = time.perf_counter()
        stop = None
        bar = progress_bar(total=cfg.steps, initial=self.step, disable=not (progress and ctx.is_main), desc="train")
        self.net.train()
        with self._events() as events, _StopOnSignal() as signals, bar:
            while self.step < cfg.steps:
                loss_value, norm_value, stop_requested = self.train_step(signals)
                losses.append(loss_value)
                window_loss, window_norm, window_n = window_loss + loss_value, window_norm + norm_value, window_n + 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean_loss, mean_norm = mean_over_ranks(ctx, [window_loss / window_n, window_norm / window_n])
                    now = time.perf_counter()
                    if ctx.is_main:
                        rate = window_n / (now - last_log)
                        self._log(
                            {
                                "step": self.step,
                                "loss": mean_loss,
                                "grad_norm": mean_norm,
                                "lr": self.scheduler.get_last_lr()[0],
                                "steps_per_s": rate,
                                "images_per_s": rate * cfg.batch_size,
                                "time": now - started,
                            },
                            events,
                        )
                        bar.set_postfix(loss=f"{mean_loss:.4f}")
                    window_loss, window_norm, window_n, last_log = 0.0, 0.0, 0, now
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                    if events is not None:
                        events.flush()  # the events up to a checkpoint are on disk
                if cfg.sample_every and self.step % cfg.sample_every == 0 and ctx.is_main:
                    self._sample_grid(events)
                if stop_requested:
                    stop = signals.requested or "signal on another rank"
                    break
            if self.last_checkpoint != checkpoint_path(self.workdir, self.step):
                self.save()
        return {
            "step": self.step,
            "start_step": start_step,
            "losses": losses,
            "stopped_by": stop,
            "checkpoint": str(self.last_checkpoint),
            "seconds": time.perf_counter() - started,
            "model": self.model,
            "ema_model": self.ema.module,
        }


def train(cfg: TrainConfig, progress: bool = True, dataset: Dataset | None = None) -> dict:
    """Train (or resume) the run described by `cfg`; see training/__init__.py.

    Resumes from the newest readable checkpoint in cfg.workdir and trains until cfg.steps. `dataset`, if given,
    replaces load_dataset(cfg.dataset, ...) (a map-style dataset of (C, H, W) float tensors in [-1, 1]).
    Returns {"step", "start_step", "losses" (this rank's per-step losses of this call), "stopped_by" (the
    signal name if SIGTERM/SIGINT stopped it early, else None), "checkpoint" (the last one written), "seconds",
    "model" (the trained network, unwrapped from DDP), "ema_model" (its EMA copy, eval mode)}.
    Raises FloatingPointError naming the step when the loss or the gradient norm is not finite.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    ctx = setup_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx, dataset).run(progress)
    finally:
        teardown_distributed(ctx)

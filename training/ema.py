"""Exponential moving average of the network weights, kept by torch.optim.swa_utils.AveragedModel (public torch
ops only: one Tensor.lerp_ per parameter)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA_WARMUP", "ema_decay_at", "create_ema", "ema_state_dict", "load_ema_state_dict"]

EMA_WARMUP = 10


def ema_decay_at(decay: float, n: int) -> float:
    """Decay of the update that follows n earlier ones: min(decay, (1 + n) / (EMA_WARMUP + n)).

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) forgets the first, fast-changing weights
    of a run quickly: the average spans about n steps early on and 1 / (1 - decay) steps once n is large.
    """
    return min(decay, (1.0 + n) / (EMA_WARMUP + n))


def _warmed_up_ema(decay: float):
    """multi_avg_fn of AveragedModel: W_ema <- W_ema + (1 - d_n) (W - W_ema), d_n = ema_decay_at(decay, n).

    d_n is computed on the device of `n_averaged` (float64, then cast to each parameter's dtype), so the update
    reads nothing back to the host.
    """

    @torch.no_grad()
    def update(ema_params: list[Tensor], model_params: list[Tensor], n_averaged: Tensor) -> None:
        n = n_averaged.to(torch.float64)
        weight = 1.0 - torch.clamp((1.0 + n) / (EMA_WARMUP + n), max=decay)
        by_dtype = {p.dtype: weight.to(p.dtype) for p in ema_params}
        for p_ema, p in zip(ema_params, model_params, strict=True):
            p_ema.lerp_(p, by_dtype[p_ema.dtype])

    return update


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA copy of `model`: the first update copies W; the update after n earlier ones sets
    W_ema <- d_n W_ema + (1 - d_n) W with d_n = ema_decay_at(decay, n).

    Buffers are copied from the model, not averaged. The copy is in eval mode with gradients off;
    `ema.module` is a model of the same class, used for sampling.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    ema = AveragedModel(model, multi_avg_fn=_warmed_up_ema(decay))
    ema.eval().requires_grad_(False)
    return ema


def ema_state_dict(ema: AveragedModel) -> dict:
    """{"weights": the averaged model's state_dict (loadable into the bare model), "n_averaged": updates so far}."""
    return {"weights": ema.module.state_dict(), "n_averaged": int(ema.n_averaged)}


def load_ema_state_dict(ema: AveragedModel, state: dict) -> None:
    """Restore what ema_state_dict returned."""
    ema.module.load_state_dict(state["weights"])
    ema.n_averaged.fill_(int(state["n_averaged"]))

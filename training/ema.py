"""Exponential moving average of the network weights, kept by torch.optim.swa_utils.AveragedModel."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["create_ema", "ema_state_dict", "load_ema_state_dict"]


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA copy of `model`: the first update copies W, later ones set W_ema <- decay W_ema + (1 - decay) W.

    Buffers are copied from the model, not averaged. The copy is in eval mode with gradients off;
    `ema.module` is a model of the same class, used for sampling.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    ema.eval().requires_grad_(False)
    return ema


def ema_state_dict(ema: AveragedModel) -> dict:
    """{"weights": the averaged model's state_dict (loadable into the bare model), "n_averaged": updates so far}."""
    return {"weights": ema.module.state_dict(), "n_averaged": int(ema.n_averaged)}


def load_ema_state_dict(ema: AveragedModel, state: dict) -> None:
    """Restore what ema_state_dict returned."""
    ema.module.load_state_dict(state["weights"])
    ema.n_averaged.fill_(int(state["n_averaged"]))

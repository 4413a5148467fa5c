"""A trained network as the samplers see it: what it predicts and the noise scale it was trained at (docs/math.md §2-4).

The score grad log p_t(x) is the invariant between any trainer and any sampler. A network trained on
x = a x0 + s Sigma^{1/2} eps with scales (a, s) = `scale(t)` predicts one of sde_lib.PREDICTIONS; its white-noise
prediction at its own scale is eps_n (sde_lib.eps_from_prediction), its score -Sigma^{-1/2} eps_n / s. A sampler
that works at another noise scale s' (NI-DDPM / NI-DDIM: sqrt(1 - abar_i) = `sde.discrete_marginal`; continuous
samplers: std(t) = `sde.marginal`) reads the same score as eps' = -s' Sigma^{1/2} score = (s' / s) eps_n: a scalar,
no transform. Where the two scales are the same function, eps_n is used as it is.

Scales are named by the functions that give them (t -> (a, s), each (B,)), so "the same scale" is decided without
comparing numbers. `scale=None` means: for "eps", the network's eps is taken at whatever scale a sampler asks for
(the `score_fn_from_eps` convention; as a score function it uses std(t)); "score" is exact at every scale; the
other predictions default to the SDE's continuous marginal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

import kernels
from sde_lib import SDE, eps_from_prediction
from sde_lib.prediction import check_prediction

__all__ = ["Scale", "ScoreModel", "score_fn_from_eps", "as_score_model"]

Scale = Callable[[Tensor], tuple[Tensor, Tensor]]
Network = Callable[[Tensor, Tensor], Tensor]


class ScoreModel:
    """network(x, t) with its prediction kind and trained scale; calling it gives the score (module docstring)."""

    def __init__(self, sde: SDE, network: Network, prediction: str = "eps", scale: Scale | None = None):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")
        if not callable(network):
            raise TypeError(f"the network must be callable as network(x, t), got {type(network).__name__}")
        self.sde = sde
        self.network = network
        self.prediction = check_prediction(prediction)
        if scale is None and prediction not in ("eps", "score"):
            scale = sde.marginal
        self.scale = scale

    def _eps(self, x: Tensor, t: Tensor, scale: Scale) -> tuple[Tensor, Tensor | None]:
        """(eps_n, s): eps at the network's trained scale (a, s), or at `scale` when it has none; s is None for
        an "eps" network, whose output needs no scale (it is looked up only to convert)."""
        out = self.network(x, t)
        if self.prediction == "eps":
            return out.to(x.dtype), None
        a, s = (self.scale or scale)(t)
        return eps_from_prediction(self.prediction, out, x, a, s, self.sde.cov, self.sde), s

    def eps(self, x: Tensor, t: Tensor, scale: Scale | None = None) -> Tensor:
        """eps' = -s' Sigma^{1/2} score(x, t) at the noise scale s' of `scale` (default: the SDE's marginal std)."""
        scale = self.sde.marginal if scale is None else scale
        eps, s = self._eps(x, t, scale)
        if self.scale is None or self.scale == scale:
            return eps
        s = self.scale(t)[1] if s is None else s
        return eps * (scale(t)[1] / s)[:, None, None, None]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The score grad log p_t(x) = -Sigma^{-1/2} eps_n / s (docs/math.md §2, 3); t is a (B,) tensor or a number."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if self.prediction == "score":
            return self.network(x, t).to(x.dtype)
        if self.prediction == "u":
            return self.network(x, t).to(x.dtype) / self.scale(t)[1][:, None, None, None]
        eps, s = self._eps(x, t, self.sde.marginal)
        s = (self.scale or self.sde.marginal)(t)[1] if s is None else s
        return kernels.score_scale(eps, s, self.sde.cov)


def score_fn_from_eps(sde: SDE, eps_model: Network) -> ScoreModel:
    """The score model of a white-noise predictor: score = -Sigma^{-1/2} eps_model(x, t) / std(t) (docs/math.md §2, 3).

    Samplers use eps_model's output unconverted at their own noise scale (`scale=None`).
    """
    return ScoreModel(sde, eps_model, "eps")


def as_score_model(sde: SDE, score_fn: Callable[[Tensor, Tensor], Tensor]) -> ScoreModel:
    """score_fn itself when it is a ScoreModel of `sde`, else a plain score function wrapped as one ("score")."""
    if isinstance(score_fn, ScoreModel) and score_fn.sde is sde:
        return score_fn
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    return ScoreModel(sde, score_fn, "score")

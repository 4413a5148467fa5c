"""The reverse-time SDE and probability-flow ODE of a forward SDE, driven by a score (docs/math.md §3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .covariance import Covariance
from .sde import ScoreFn, _batch_t, _bc

if TYPE_CHECKING:
    from .sde import SDE

__all__ = ["ReverseSDE"]


class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 Sigma s] dt + g Sigma^{1/2} dw_bar, integrated from T down to 0 (docs/math.md §3).

    With probability_flow=True it is the ODE dx = [f - g^2 Sigma s / 2] dt with zero diffusion. Written with the
    white-noise prediction eps = -std(t) Sigma^{1/2} s, the drift is f + (w g^2 / std) Sigma^{1/2} eps (w = 1, or
    1/2 for the ODE): `coefficients` gives (f, w g^2 / std, g), which the samplers apply in one fused update, and
    `sde` / `discretize` give score_sde_pytorch's (drift, diffusion) from score_fn (None when only the
    coefficients are used).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn | None, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def cov(self) -> Covariance:
        return self.forward.cov

    def coefficients(self, x: Tensor, t: Tensor, discrete: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(f, c_eps, G): reverse drift f + Sigma^{1/2} (c_eps eps) with eps at std(t), and diffusion G.

        discrete=False: f, G = forward.sde (per unit time); True: f, G = forward.discretize (one step).
        """
        t = _batch_t(t, x)
        f, G = (self.forward.discretize if discrete else self.forward.sde)(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        c_eps = weight * G**2 / self.forward.marginal_std(t)
        return f, c_eps, torch.zeros_like(G) if self.probability_flow else G

    def _drift(self, x: Tensor, t: Tensor, discrete: bool) -> tuple[Tensor, Tensor]:
        f, c_eps, G = self.coefficients(x, t, discrete)
        std = self.forward.marginal_std(_batch_t(t, x))  # Sigma^{1/2} (c_eps eps) = -c_eps std Sigma s
        return f - _bc(c_eps * std) * self.cov.mul(self.score_fn(x, _batch_t(t, x))), G

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._drift(x, t, discrete=False)

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._drift(x, t, discrete=True)

"""Denoising score-matching losses with non-isotropic noise (MATH.md 2-4).

Every loss perturbs clean images x_0 as x_t = a x_0 + s Sigma^{1/2} eps with white eps ~ N(0, I) (through
`kernels.perturb`) and regresses a network output on eps; the reduction is the mean over pixels and batch
(MATH.md 2, [CONVENTION]). The weighting lambda = s^2 Sigma turns score matching into that plain MSE:

    s^2 (s_theta - s_cond)^T Sigma (s_theta - s_cond) = || residual ||^2,    s_cond = -Sigma^{-1/2} eps / s

  "ddpm"  NI-DDPM (MATH.md 2): i ~ U{0..N-1}, a = sqrt(abar_i), s = sqrt(1 - abar_i), the net sees
          t = sde.discrete_time(i) = (i + 1) T / N; residual eps_theta(x_t, t) - eps;
          score s_theta = -Sigma^{-1/2} eps_theta / s.
  "dsm"   continuous DSM (MATH.md 3, 4): t ~ U(eps_t, 1), a = a(t), s = std(t) of the SDE (VP, sub-VP, NIVP: the
          eps parameterisation; VE, NI-VE: the sigma-conditional eps parameterisation); same residual and score.
  "ncsn"  NCSN unconditional form (MATH.md 4), VE family: i ~ U{0..N-1}, t = sde.discrete_time(i), s = sigma(t);
          residual Sigma^{1/2} u_theta(x_t) + eps; score s_theta = u_theta / sigma(t).

Isotropic models are Sigma = I (IdentityCovariance): the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sde_lib import NIVESDE, NIVPSDE, SDE, SubVPSDE
from sde_lib.sde import ScoreFn

__all__ = ["EPS_T", "NoiseLevels", "DiffusionLoss", "NIDDPMLoss", "DSMLoss", "NCSNLoss", "get_loss", "score_fn_for"]

EPS_T = 1e-5
# Tag of the random stream that draws noise levels, so that it never coincides with the stream of eps
# that kernels.perturb derives from the same seed.
_LEVEL_STREAM = 0x4C45564C


@dataclass(frozen=True)
class NoiseLevels:
    """Per-sample perturbation x_t = a x_0 + s Sigma^{1/2} eps; the network is evaluated at time t. All (B,)."""

    t: Tensor
    a: Tensor
    s: Tensor


def _bc(v: Tensor) -> Tensor:
    return v[:, None, None, None]


def _level_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _LEVEL_STREAM])


class DiffusionLoss(ABC):
    """A training loss: `loss(model, sde, x0, seed)` -> scalar mean over pixels; `score(model, sde, x, t)`."""

    name: str

    @abstractmethod
    def check_sde(self, sde: SDE) -> None:
        """Raise ValueError if this loss does not apply to `sde`."""

    @abstractmethod
    def levels(self, sde: SDE, batch: int, seed: int) -> NoiseLevels:
        """Noise levels of a batch, drawn from a stream fixed by `seed` (float64, CPU)."""

    @abstractmethod
    def std(self, sde: SDE, t: Tensor) -> Tensor:
        """s at network time t: the std of the marginal the network was trained on, (B,)."""

    @abstractmethod
    def residual(self, model: nn.Module, sde: SDE, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The (B, C, H, W) residual (in eps's dtype) whose mean square is the loss."""

    @abstractmethod
    def score(self, model: nn.Module, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        """s_theta(x, t), the score model implied by the network's output."""

    def perturb(self, sde: SDE, x0: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t, t, eps): draw levels and build x_t = a x_0 + s Sigma^{1/2} eps with kernels.perturb."""
        from kernels import perturb

        if x0.dim() != 4:
            raise ValueError(f"x0 must be a (B, C, H, W) batch, got shape {tuple(x0.shape)}")
        lv = self.levels(sde, x0.shape[0], seed)
        a, s = (v.to(device=x0.device, dtype=x0.dtype) for v in (lv.a, lv.s))
        x_t, eps = perturb(x0, a, s, sde.cov, int(seed))
        return x_t, lv.t.to(device=x0.device, dtype=x0.dtype), eps

    def __call__(self, model: nn.Module, sde: SDE, x0: Tensor, seed: int) -> Tensor:
        """mean over batch and pixels of residual^2 (the per-sample loss / D, MATH.md 2-4)."""
        self.check_sde(sde)
        x_t, t, eps = self.perturb(sde, x0, seed)
        return self.residual(model, sde, x_t, t, eps).square().mean()


class _EpsParameterised(DiffusionLoss):
    """Network output eps_theta: residual eps_theta - eps, score -Sigma^{-1/2} eps_theta / s (MATH.md 2, 3)."""

    def residual(self, model: nn.Module, sde: SDE, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return model(x_t, t).to(eps.dtype) - eps

    def score(self, model: nn.Module, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        from kernels import score_scale

        return score_scale(model(x, t).to(x.dtype), self.std(sde, t).to(x), sde.cov)


class NIDDPMLoss(_EpsParameterised):
    """NI-DDPM (MATH.md 2): i ~ U{0..N-1}, x_t = sqrt(abar_i) x_0 + sqrt(1 - abar_i) Sigma^{1/2} eps,
    loss mean ||eps_theta(x_t, t_i) - eps||^2, t_i = sde.discrete_time(i). VP family (NIVPSDE / VPSDE) only."""

    name = "ddpm"

    def check_sde(self, sde: SDE) -> None:
        if not isinstance(sde, NIVPSDE) or isinstance(sde, SubVPSDE):
            raise ValueError(f"loss 'ddpm' needs a VP-family SDE (NIVPSDE/VPSDE), got {type(sde).__name__}")

    def levels(self, sde: SDE, batch: int, seed: int) -> NoiseLevels:
        i = torch.from_numpy(_level_rng(seed).integers(0, sde.N, size=batch))
        abar = sde.schedule.alphas_cumprod[i]
        return NoiseLevels(sde.discrete_time(i), abar.sqrt(), (1.0 - abar).sqrt())

    def std(self, sde: SDE, t: Tensor) -> Tensor:
        abar = sde.schedule.alphas_cumprod[sde.discrete_index(t.detach().cpu())]
        return (1.0 - abar).sqrt().to(device=t.device)


class DSMLoss(_EpsParameterised):
    """Continuous DSM (MATH.md 3, 4): t ~ U(eps_t, 1), x_t = a(t) x_0 + std(t) Sigma^{1/2} eps,
    loss mean ||eps_theta(x_t, t) - eps||^2. Any SDE (VP, sub-VP, NIVP, VE, NI-VE)."""

    name = "dsm"

    def __init__(self, eps_t: float = EPS_T):
        if not 0.0 <= eps_t < 1.0:
            raise ValueError(f"eps_t must lie in [0, 1), got {eps_t}")
        self.eps_t = float(eps_t)

    def check_sde(self, sde: SDE) -> None:
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")

    def levels(self, sde: SDE, batch: int, seed: int) -> NoiseLevels:
        u = torch.from_numpy(_level_rng(seed).random(batch))
        t = self.eps_t + (sde.T - self.eps_t) * u
        return NoiseLevels(t, sde.mean_coeff(t), sde.marginal_std(t))

    def std(self, sde: SDE, t: Tensor) -> Tensor:
        return sde.marginal_std(t)


class NCSNLoss(DiffusionLoss):
    """NCSN unconditional form (MATH.md 4): i ~ U{0..N-1}, t_i = sde.discrete_time(i),
    x_t = x_0 + sigma(t_i) Sigma^{1/2} eps;
    loss mean ||Sigma^{1/2} u_theta(x_t) + eps||^2, score u_theta / sigma. VE family (NIVESDE / VESDE) only.

    The network is called as model(x_t, t) with t = sde.discrete_time(i); an unconditional network
    (UNetConfig.conditional=False) ignores t, which is the NCSN u_theta(x).
    """

    name = "ncsn"

    def check_sde(self, sde: SDE) -> None:
        if not isinstance(sde, NIVESDE):
            raise ValueError(f"loss 'ncsn' needs a VE-family SDE (NIVESDE/VESDE), got {type(sde).__name__}")

    def levels(self, sde: SDE, batch: int, seed: int) -> NoiseLevels:
        t = sde.discrete_time(torch.from_numpy(_level_rng(seed).integers(0, sde.N, size=batch)))
        return NoiseLevels(t, torch.ones(batch, dtype=torch.float64), sde.marginal_std(t))

    def std(self, sde: SDE, t: Tensor) -> Tensor:
        return sde.marginal_std(t)

    def residual(self, model: nn.Module, sde: SDE, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return sde.cov.sqrt_mul(model(x_t, t).to(eps.dtype)) + eps

    def score(self, model: nn.Module, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        return model(x, t).to(x.dtype) / _bc(self.std(sde, t).to(x))


_LOSSES = {cls.name: cls for cls in (NIDDPMLoss, DSMLoss, NCSNLoss)}


def get_loss(name: str) -> DiffusionLoss:
    """The loss called `name` in {"ddpm", "dsm", "ncsn"}."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(_LOSSES)}")
    return _LOSSES[name]()


def score_fn_for(model: nn.Module, sde: SDE, loss: str | DiffusionLoss) -> ScoreFn:
    """score_fn(x, t) of a network trained with `loss`, for sde.reverse and the samplers (MATH.md 2-4).

    eps-parameterised ("ddpm", "dsm"): -Sigma^{-1/2} eps_theta(x, t) / s(t); "ncsn": u_theta(x) / sigma(t).
    It needs an invertible Sigma (Sigma^{-1/2}); samplers that only use Sigma s_theta can avoid it.
    """
    loss = get_loss(loss) if isinstance(loss, str) else loss
    if not isinstance(loss, DiffusionLoss):
        raise TypeError(f"loss must be a loss name or a DiffusionLoss, got {type(loss).__name__}")
    loss.check_sde(sde)

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return loss.score(model, sde, x, t.expand(x.shape[0]) if t.dim() == 0 else t)

    return score_fn

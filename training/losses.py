"""Denoising score-matching losses with non-isotropic noise (docs/math.md §2-4).

Every loss perturbs clean images x_0 as x_t = a x_0 + s Sigma^{1/2} eps with white eps ~ N(0, I) (through
`kernels.perturb`), at the scales (a, s) = `loss.scale(sde)(t)` of the time t it draws, and regresses the network's
white-noise prediction on eps: whatever the network predicts (sde_lib.PREDICTIONS: eps, x0, v, u), its output is
turned into eps at (a, s) by sde_lib.eps_from_prediction. The reduction is the mean over pixels and batch
(docs/math.md §2, [CONVENTION]). The weighting lambda = s^2 Sigma turns score matching into that plain MSE:

    s^2 (s_theta - s_cond)^T Sigma (s_theta - s_cond) = || eps_theta - eps ||^2,    s_cond = -Sigma^{-1/2} eps / s

  "ddpm"  NI-DDPM (docs/math.md §2): i ~ U{0..N-1}, t = sde.discrete_time(i) = (i + 1) T / N, (a, s) = (sqrt(abar_i),
          sqrt(1 - abar_i)) = sde.discrete_marginal(t); SDEs with a discrete DDPM chain (VP, NIVP).
  "dsm"   continuous DSM (docs/math.md §3, 4): t ~ U(eps_t, 1), (a, s) = sde.marginal(t) = (a(t), std(t)); any SDE
          (VP, sub-VP, NIVP: the eps parameterisation; VE, NI-VE: the sigma-conditional eps parameterisation).
  "ncsn"  NCSN unconditional form (docs/math.md §4): i ~ U{0..N-1}, t = sde.discrete_time(i), (a, s) = (1, sigma(t));
          the network predicts u with score u / sigma, i.e. eps_theta = -Sigma^{1/2} u_theta; VE family only.

The trained network reaches the samplers as `score_fn_for(model, sde, loss)`: a samplers.ScoreModel that knows its
prediction and its scale, so a sampler working at the same scale uses the network's eps as it is.
Isotropic models are Sigma = I (IdentityCovariance): the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from samplers import ScoreModel
from samplers.score_model import Scale
from sde_lib import SDE, NotApplicableError, eps_from_prediction
from sde_lib.prediction import check_prediction

from .config import TIME_SAMPLINGS

__all__ = [
    "EPS_T",
    "TIME_SAMPLINGS",
    "time_of_log_snr",
    "NoiseLevels",
    "DiffusionLoss",
    "NIDDPMLoss",
    "DSMLoss",
    "NCSNLoss",
    "get_loss",
    "loss_for",
    "score_fn_for",
]

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


def _level_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _LEVEL_STREAM])


class DiffusionLoss(ABC):
    """A training loss: `loss(model, sde, x0, seed)` -> scalar mean over pixels; `score_fn_for` its ScoreModel."""

    name: str
    prediction: str = "eps"

    def check_sde(self, sde: SDE) -> None:
        """Raise ValueError if this loss does not apply to `sde` (asks the SDE for the scale it trains at)."""
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a sde_lib SDE, got {type(sde).__name__}")
        try:
            self.scale(sde)
        except NotApplicableError as err:
            raise ValueError(f"loss {self.name!r} does not apply to {sde.name}: {err}") from None

    @abstractmethod
    def scale(self, sde: SDE) -> Scale:
        """t -> (a, s): the scales of x_t = a x_0 + s Sigma^{1/2} eps that the network is trained at."""

    @abstractmethod
    def times(self, sde: SDE, batch: int, rng: np.random.Generator) -> Tensor:
        """The (B,) float64 network times of a batch."""

    def levels(self, sde: SDE, batch: int, seed: int) -> NoiseLevels:
        """Noise levels of a batch, drawn from a stream fixed by `seed` (float64, CPU)."""
        t = self.times(sde, batch, _level_rng(seed))
        return NoiseLevels(t, *self.scale(sde)(t))

    def perturb(self, sde: SDE, x0: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t, t, eps): draw levels and build x_t = a x_0 + s Sigma^{1/2} eps with kernels.perturb."""
        from kernels import perturb
        from kernels.noise import white_noise

        if x0.dim() != 4:
            raise ValueError(f"x0 must be a (B, C, H, W) batch, got shape {tuple(x0.shape)}")
        lv = self.levels(sde, x0.shape[0], seed)
        a, s = (v.to(device=x0.device, dtype=x0.dtype) for v in (lv.a, lv.s))
        if sde.per_coefficient:  # the spectral family: x_t = U^T (a U x_0 + s U eps), the same white eps
            eps = white_noise(int(seed), x0.shape[0], tuple(x0.shape[1:]), x0.dtype, x0.device)
            x_t = sde.perturb(x0, eps, a, s)
        else:
            x_t, eps = perturb(x0, a, s, sde.cov, int(seed))
        return x_t, lv.t.to(device=x0.device, dtype=x0.dtype), eps

    def residual(self, model: nn.Module, sde: SDE, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """eps_theta - eps, (B, C, H, W) in eps's dtype: eps_theta from the network's prediction at scale(t)."""
        out = model(x_t, t)
        if self.prediction == "eps":
            return out.to(eps.dtype) - eps
        a, s = self.scale(sde)(t)
        return eps_from_prediction(self.prediction, out, x_t.to(eps.dtype), a, s, sde.cov, sde) - eps

    def __call__(self, model: nn.Module, sde: SDE, x0: Tensor, seed: int) -> Tensor:
        """mean over batch and pixels of residual^2 (the per-sample loss / D, docs/math.md §2-4)."""
        self.check_sde(sde)
        x_t, t, eps = self.perturb(sde, x0, seed)
        return self.residual(model, sde, x_t, t, eps).square().mean()


class NIDDPMLoss(DiffusionLoss):
    """NI-DDPM (docs/math.md §2): i ~ U{0..N-1}, x_t = sqrt(abar_i) x_0 + sqrt(1 - abar_i) Sigma^{1/2} eps,
    loss mean ||eps_theta(x_t, t_i) - eps||^2, t_i = sde.discrete_time(i). VP family (NIVPSDE / VPSDE) only."""

    name = "ddpm"

    def __init__(self, prediction: str = "eps"):
        self.prediction = check_prediction(prediction)

    def scale(self, sde: SDE) -> Scale:
        sde.discrete_alphas_cumprod()  # NotApplicableError without a discrete DDPM chain
        return sde.discrete_marginal

    def times(self, sde: SDE, batch: int, rng: np.random.Generator) -> Tensor:
        return sde.discrete_time(torch.from_numpy(rng.integers(0, sde.N, size=batch)))


class DSMLoss(DiffusionLoss):
    """Continuous DSM (docs/math.md §3, 4): t ~ U(eps_t, 1), x_t = a(t) x_0 + std(t) Sigma^{1/2} eps,
    loss mean ||eps_theta(x_t, t) - eps||^2. Any SDE (VP, sub-VP, NIVP, VE, NI-VE).

    time_sampling="lognormal" draws t instead from ln(std(t) / a(t)) ~ N(mean, std^2) (EDM's noise-level law,
    `lognormal` = (mean, std)), clamped to [eps_t, T]: the same objective weighted by that density of t, so its
    minimiser is the same score; x_t and the Sigma^{1/2} noise are unchanged.
    """

    name = "dsm"

    def __init__(
        self,
        eps_t: float = EPS_T,
        prediction: str = "eps",
        time_sampling: str = "uniform",
        lognormal: tuple[float, float] = (-1.2, 1.2),
    ):
        if not 0.0 <= eps_t < 1.0:
            raise ValueError(f"eps_t must lie in [0, 1), got {eps_t}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        if not lognormal[1] > 0:
            raise ValueError(f"the lognormal std must be > 0, got {lognormal[1]}")
        self.eps_t = float(eps_t)
        self.prediction = check_prediction(prediction)
        self.time_sampling = time_sampling
        self.lognormal = (float(lognormal[0]), float(lognormal[1]))
        self._inverse: tuple[SDE, Callable[[np.ndarray], np.ndarray]] | None = None  # time_of_log_snr of the last SDE

    def scale(self, sde: SDE) -> Scale:
        return sde.marginal

    def times(self, sde: SDE, batch: int, rng: np.random.Generator) -> Tensor:
        if self.time_sampling == "uniform":
            return self.eps_t + (sde.T - self.eps_t) * torch.from_numpy(rng.random(batch))
        if self._inverse is None or self._inverse[0] is not sde:
            self._inverse = (sde, time_of_log_snr(sde, max(self.eps_t, 1e-12)))
        mean, std = self.lognormal
        return torch.from_numpy(self._inverse[1](-(mean + std * rng.standard_normal(batch))))  # log(a/std) = -ln(std/a)


def time_of_log_snr(sde: SDE, t_min: float, points: int = 16385) -> Callable[[np.ndarray], np.ndarray]:
    """The inverse t(lambda) of sde.log_snr (decreasing) on [t_min, T]: log t interpolated linearly in lambda on a
    grid geometric in t (lambda within about 1e-6 of the target); a value outside the range gives the nearer end."""
    t = np.geomspace(t_min, sde.T, points)
    lam = sde.log_snr(torch.from_numpy(t)).numpy()[::-1]
    log_t = np.log(t)[::-1]
    return lambda log_snr: np.exp(np.interp(log_snr, lam, log_t))


class NCSNLoss(DiffusionLoss):
    """NCSN unconditional form (docs/math.md §4): i ~ U{0..N-1}, t_i = sde.discrete_time(i),
    x_t = x_0 + sigma(t_i) Sigma^{1/2} eps;
    loss mean ||Sigma^{1/2} u_theta(x_t) + eps||^2, score u_theta / sigma. VE family (NIVESDE / VESDE) only.

    The network is called as model(x_t, t) with t = sde.discrete_time(i); an unconditional network
    (UNetConfig.conditional=False) ignores t, which is the NCSN u_theta(x).
    """

    name = "ncsn"
    prediction = "u"

    def scale(self, sde: SDE) -> Scale:
        sde.smld_sigmas()  # NotApplicableError outside the VE family
        return sde.marginal

    def times(self, sde: SDE, batch: int, rng: np.random.Generator) -> Tensor:
        return sde.discrete_time(torch.from_numpy(rng.integers(0, sde.N, size=batch)))


_LOSSES = {cls.name: cls for cls in (NIDDPMLoss, DSMLoss, NCSNLoss)}


def get_loss(name: str) -> DiffusionLoss:
    """The loss called `name` in {"ddpm", "dsm", "ncsn"}."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(_LOSSES)}")
    return _LOSSES[name]()


def loss_for(cfg) -> DiffusionLoss:
    """The loss of a training.TrainConfig: its `loss` and `prediction`, with the `time_sampling` of "dsm"."""
    if cfg.loss == "dsm":
        return DSMLoss(prediction=cfg.prediction, time_sampling=cfg.time_sampling,
                       lognormal=(cfg.lognormal_mean, cfg.lognormal_std))  # fmt: skip
    if cfg.loss == "ddpm":
        return NIDDPMLoss(prediction=cfg.prediction)
    return get_loss(cfg.loss)


def score_fn_for(model: nn.Module, sde: SDE, loss: str | DiffusionLoss) -> ScoreModel:
    """The network as the samplers see it (samplers.ScoreModel): what it predicts and the scale it was trained at
    under `loss` (a run's own is `loss_for(cfg)`); calling it gives the score (docs/math.md §2-4), and each sampler
    reads its eps at the sampler's scale."""
    loss = get_loss(loss) if isinstance(loss, str) else loss
    if not isinstance(loss, DiffusionLoss):
        raise TypeError(f"loss must be a loss name or a DiffusionLoss, got {type(loss).__name__}")
    loss.check_sde(sde)
    return ScoreModel(sde, model, loss.prediction, loss.scale(sde))

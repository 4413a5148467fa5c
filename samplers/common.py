"""What every sampler shares: the model as a ScoreModel, the update step, seeds, checks and time grids.

Every sampler step in this package is one call of `kernels.ni_update` (docs/math.md §2-4):

    x_next = c_x x + Sigma^{1/2} (c_eps eps + c_z z),     z ~ N(0, I) white noise from a per-step seed,

where eps is the model's white-noise prediction at (x, t) at the sampler's noise scale (`Run.eps`; see
samplers.score_model): Sigma s = -Sigma^{1/2} eps / std, so the samplers only ever apply Sigma^{1/2}, through the
kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

import kernels
from kernels.noise import white_noise
from sde_lib import SDE

from .progress import progress
from .score_model import Scale, as_score_model
from .seeds import batch_seed

__all__ = [
    "ScoreFn",
    "Run",
    "time_grid",
    "batch_time",
    "probability_flow_drift",
    "check_eps",
    "DEFAULT_EPS",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

DEFAULT_EPS = 1e-3  # the last time of continuous-time samplers (score_sde_pytorch's sampling eps)
SEED_HIGH = 2**31 - 1
CHECK_EVERY_ON_GPU = 10  # sampler updates between finiteness checks on a GPU (each check synchronises)


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """t as a (B,) tensor of x's dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def time_grid(sde: SDE, steps: int, eps: float) -> Tensor:
    """steps times linspace(T, eps, steps), float64: where the continuous-time samplers evaluate the model."""
    check_eps(sde, eps)
    return torch.linspace(sde.T, eps, steps, dtype=torch.float64)


def check_eps(sde: SDE, eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps (the smallest time) must lie in (0, T = {sde.T}), got {eps!r}")
    return float(eps)


def probability_flow_drift(sde: SDE, eps_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> Tensor:
    """dx/dt = f(x, t) - 1/2 g(t)^2 Sigma s = f(x, t) + g^2 / (2 std) Sigma^{1/2} eps(x, t) (docs/math.md §3, 4).

    eps_fn(x, t) is the model's eps at the marginal std. The coefficients are the reverse ODE's
    (`sde.reverse(..., probability_flow=True).coefficients`); one `kernels.ni_update` with c_x = 1 and no noise
    (differentiable in x: kernels use their torch reference when gradients are recorded).
    """
    if sde.per_coefficient:  # the spectral family: the same flow per coefficient of its basis
        from .spectral import spectral_probability_flow_drift

        return spectral_probability_flow_drift(sde, eps_fn, x, t)
    f, c_eps, _ = sde.reverse(None, probability_flow=True).coefficients(x, t)
    return kernels.ni_update(f, eps_fn(x, t), 1.0, c_eps, 0.0, sde.cov, None)


class Run:
    """One sampling run: the SDE, the eps view of the model (counting evaluations), seeds, progress and checks."""

    def __init__(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        progress: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ):
        self.sde = sde
        self.shape = tuple(shape)
        self.generator = generator
        self.show_progress = bool(progress)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self.model = as_score_model(sde, score_fn)
        self.nfe = 0
        self._seeds = 0
        self._base_seed = 0
        self._updates = 0

    @property
    def batch(self) -> int:
        return self.shape[0]

    def time(self, t: float) -> Tensor:
        """A (B,) time vector of the run's dtype and device."""
        return torch.full((self.batch,), float(t), dtype=self.dtype, device=self.device)

    def eps(self, x: Tensor, t: float | Tensor, scale: Scale | None = None) -> Tensor:
        """The model's white-noise prediction at (x, t) at noise scale `scale` (default: the SDE's marginal std,
        `sde.marginal`); counts one function evaluation."""
        self.nfe += 1
        return self.model.eps(x, self.time(t) if not isinstance(t, Tensor) else t, scale)

    def seed(self) -> int:
        """A fresh noise seed: the first is drawn from the user's generator (the run's one read from it, a single
        host synchronisation on a GPU), the following ones are hashed on the host from (first seed, count), so the
        run's noise is reproducible from the generator."""
        if self._seeds == 0:
            device = self.generator.device if self.generator is not None else None
            self._base_seed = int(torch.randint(0, SEED_HIGH, (), generator=self.generator, device=device))
        self._seeds += 1
        return self._base_seed if self._seeds == 1 else batch_seed(self._base_seed, self._seeds - 1)

    def prior(self) -> Tensor:
        """x_T = c Sigma^{1/2} z ~ N(0, c^2 Sigma) by `sde.prior_sampling` from the white noise of a fresh seed
        (`kernels.noise`'s rule): sample i's noise depends on (seed, i) only."""
        white = white_noise(self.seed(), self.batch, self.shape[1:], self.dtype, self.device)
        return self.check(self.sde.prior_sampling(self.shape, noise=white), "prior", self.sde.T)

    def update(self, x: Tensor, eps: Tensor, c_x, c_eps, c_z, step: int | str, t: float | Tensor) -> Tensor:
        """x_next = c_x x + Sigma^{1/2}(c_eps eps + c_z z) by one `kernels.ni_update`; c_* scalars or (B,) tensors.

        A fresh seed is drawn for a step with noise (c_z anything but the number 0, so that no tensor is read back
        to the host). Raises FloatingPointError on a non-finite result (see `check`), naming the step and time.
        """
        noise = not (isinstance(c_z, (int, float)) and c_z == 0)
        return self.accept(kernels.ni_update(x, eps, c_x, c_eps, c_z, self.sde.cov, self.seed() if noise else None),
                           step, t)  # fmt: skip

    def accept(self, x: Tensor, step: int | str, t: float | Tensor) -> Tensor:
        """The state of a sampler step (`update`'s, or one a sampler formed itself), counted and checked as in
        `update`."""
        self._updates += 1
        return self.check(x, step, t, every=CHECK_EVERY_ON_GPU)

    def check(self, x: Tensor, step: int | str, t: float | Tensor, every: int = 1) -> Tensor:
        """x itself, or FloatingPointError when it holds a NaN or an infinity. On a GPU, where the check reads a
        value back to the host, an update checks every `every`-th time (and a named final step always)."""
        if x.device.type != "cpu" and isinstance(step, int) and self._updates % every:
            return x
        if not bool(torch.isfinite(x).all()):
            t = float(t.flatten()[0]) if isinstance(t, Tensor) else float(t)
            raise FloatingPointError(
                f"sampling produced a non-finite value at step {step} (t = {t:.6g}); check the score model "
                "and the step size"
            )
        return x

    def steps(self, items: Iterable, total: int, desc: str) -> Iterator:
        """`items`, with a tqdm bar when the run shows progress."""
        return iter(progress(items, total=total, desc=desc, disable=not self.show_progress, leave=False))

    def progress_bar(self, desc: str):
        """An open-ended tqdm bar (advance it with .update(), end it with .close()); inert without progress."""
        return progress(desc=desc, disable=not self.show_progress, leave=False)
